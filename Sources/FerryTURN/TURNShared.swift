import FerryCore
import FerryWire
import Synchronization

/// State every worker's TURN server shares: the per-user allocation counts (a user's clients
/// land on any worker), EVEN-PORT reservations (redeemed from any worker), both touched only by
/// Allocate, Refresh-to-zero and expiry; and the live relayed ports, written there too and read
/// lock-free per packet (`RelayPortSet`, whose storage this object owns).
public final class TURNShared: Sendable {
    private let users = Mutex<[String: Int]>([:])
    private let reservations = Mutex<[UInt64: Reservation]>([:])
    public let relayPorts = RelayPortSet.allocate()

    deinit { relayPorts.deallocate() }

    public struct Reservation: Sendable {
        public let socket: ReservedRelay
        public let port: UInt16
        public let family: IPFamily
        public let expiry: UInt64
    }

    public init() {}

    /// Counts one more allocation for `user` unless that reaches `limit`.
    public func reserveUserSlot(_ user: String, limit: Int) -> Bool {
        users.withLock { u in
            let n = u[user, default: 0]
            guard n < limit else { return false }
            u[user] = n + 1
            return true
        }
    }

    public func releaseUserSlot(_ user: String) {
        users.withLock { u in
            let n = u[user, default: 0] - 1
            u[user] = n > 0 ? n : nil
        }
    }

    public func addReservation(_ token: UInt64, _ r: Reservation) {
        reservations.withLock { $0[token] = r }
    }

    public func takeReservation(_ token: UInt64) -> Reservation? {
        reservations.withLock { $0.removeValue(forKey: token) }
    }

    /// Removes reservations past their expiry; the caller closes their sockets.
    public func expiredReservations(now: UInt64) -> [Reservation] {
        reservations.withLock { r in
            let gone = r.filter { $0.value.expiry <= now }
            for k in gone.keys { r[k] = nil }
            return Array(gone.values)
        }
    }
}
