import FerryCore
import FerryWire

/// The worker's side of relayed sockets: opening, closing, options. Implemented by the server
/// on the engine and by a fake in tests. Called on the control path only.
public protocol RelayProvider: AnyObject {
    /// Opens a relayed UDP socket bound to `ip` (port chosen by the provider; even when asked),
    /// registered so its datagrams reach allocation `slot`. Returns the handle and port.
    func openRelay(ip: IPAddress, evenPort: Bool, slot: Int32, generation: UInt32) -> (handle: Int32, port: UInt16)?
    /// Opens the socket on exactly `port`, not registered for reading (an EVEN-PORT reservation).
    func openReserved(ip: IPAddress, port: UInt16) -> Int32?
    /// Starts reading a previously reserved socket for allocation `slot`.
    func adopt(handle: Int32, slot: Int32, generation: UInt32)
    func closeRelay(handle: Int32)
    /// DONT-FRAGMENT (RFC 8656 §14): set DF on what the relayed socket sends.
    func setDontFragment(handle: Int32)
}
