import FerryCore
import FerryWire

/// A relayed socket as TURN state names it: a slot in the worker's relay table and the slot's
/// generation, bumped on every reuse. A stale id (its socket closed, the slot reused) no longer
/// resolves, where a stored descriptor number could name whatever socket took the number next.
public struct RelayID: Hashable, Sendable {
    public let slot: Int32
    public let generation: UInt32

    @inlinable public init(slot: Int32, generation: UInt32) {
        self.slot = slot
        self.generation = generation
    }

    /// No relayed socket (an allocation without that address family).
    public static let none = RelayID(slot: -1, generation: 0)
    @inlinable public var isNone: Bool { slot < 0 }
}

/// A socket bound for an EVEN-PORT reservation (RFC 8656 §7.2, R bit) that no worker reads yet:
/// any worker may redeem it, so it crosses workers as this opaque token, which only the
/// `RelayProvider` that made it interprets.
public struct ReservedRelay: Sendable {
    public let token: Int32
    public init(token: Int32) { self.token = token }
}

/// The worker's side of relayed sockets: opening, closing, options. Implemented by the worker
/// on the engine and by fakes in tests and fuzzing. Called on the control path only.
public protocol RelayProvider: AnyObject {
    /// Opens a relayed UDP socket bound to `ip` (port chosen by the provider; even when asked),
    /// registered so its datagrams reach allocation `slot`. Returns its id and port.
    func openRelay(ip: IPAddress, evenPort: Bool, slot: Int32, generation: UInt32) -> (relay: RelayID, port: UInt16)?
    /// Opens the socket on exactly `port`, not registered for reading (an EVEN-PORT reservation).
    func openReserved(ip: IPAddress, port: UInt16) -> ReservedRelay?
    /// Starts reading a reserved socket for allocation `slot`; nil (and the socket closed) when
    /// it cannot.
    func adopt(_ reserved: ReservedRelay, slot: Int32, generation: UInt32) -> RelayID?
    func closeRelay(_ relay: RelayID)
    /// Closes a reservation nobody redeemed.
    func closeReserved(_ reserved: ReservedRelay)
    /// DONT-FRAGMENT (RFC 8656 §14): set DF on what the relayed socket sends.
    func setDontFragment(_ relay: RelayID)
}
