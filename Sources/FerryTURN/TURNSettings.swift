import FerryCore
import FerryWire
import Synchronization

/// What a worker's TURN server is allowed to do; built from the config by the server.
public struct TURNSettings: Sendable {
    public var realm = "ferry"
    public var software: String? = "ferry"
    /// Addresses relayed sockets bind to, per family; nil disables that family.
    public var relayIPv4: IPAddress? = IPAddress("127.0.0.1")
    public var relayIPv6: IPAddress?
    /// Addresses advertised in XOR-RELAYED-ADDRESS when the host is behind 1:1 NAT.
    public var externalIPv4: IPAddress?
    public var externalIPv6: IPAddress?
    /// Seconds (RFC 8656 §7.2: default 600 s, and a configurable maximum).
    public var defaultLifetime: UInt32 = 600
    public var maxLifetime: UInt32 = 3600
    /// RFC 8656 §9 and §12: fixed by the protocol.
    public static let permissionLifetime: UInt64 = 300
    public static let channelLifetime: UInt64 = 600
    public static let channelReuseDelay: UInt64 = 300
    /// This worker's share of `turn.max_allocations`.
    public var maxAllocations = 1000
    public var maxAllocationsPerUser = 10
    public var maxPermissionsPerAllocation = 16
    public var maxChannelsPerAllocation = 16
    /// Bytes per second per allocation, both directions together; 0 = unlimited.
    public var bandwidthPerAllocation: UInt64 = 0
    public var bandwidthBurst: UInt64 = 0
    /// 401 answers per second per source IP (a bucket of `unauthorizedBurst`); 0 = unlimited.
    public var unauthorizedPerSecond: Double = 5
    public var unauthorizedBurst: Double = 20
    /// Only RFC 8656's channel numbers (0x4000–0x4FFF); otherwise RFC 5766's up to 0x7FFF too.
    public var strictChannelNumbers = false

    public init() {}
}

/// State every worker's TURN server shares: the per-user allocation counts (a user's clients
/// land on any worker) and EVEN-PORT reservations (redeemed from any worker). Touched only by
/// Allocate, Refresh-to-zero and expiry: the control path, never per packet.
public final class TURNShared: Sendable {
    private let users = Mutex<[String: Int]>([:])
    private let reservations = Mutex<[UInt64: Reservation]>([:])

    public struct Reservation: Sendable {
        public let handle: Int32
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

/// The counters the TURN logic bumps; the server registers them (docs/metrics.md).
public struct TURNCounters: Sendable {
    /// `requests[methodIndex][resultIndex]`; see `TURNCounters.methods` and `.results`.
    public let requests: [[CounterID]]
    public let authFailures: [AuthFailure: CounterID]
    public let drops: [Drop: CounterID]
    public let allocationsCreated: CounterID
    public let allocationsExpired: CounterID
    public let allocationsDeleted: CounterID
    public let allocationsActive: CounterID
    public let permissionsCreated: CounterID
    public let channelsBound: CounterID
    public let relayedPackets: (toPeer: CounterID, toClient: CounterID)
    public let relayedBytes: (toPeer: CounterID, toClient: CounterID)

    public static let methods: [UInt16] = [STUNMethods.binding, STUNMethods.allocate, STUNMethods.refresh,
                                           STUNMethods.createPermission, STUNMethods.channelBind]
    public static let results: [Int] = [0, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 508]

    public enum AuthFailure: String, CaseIterable, Sendable {
        case missingIntegrity = "missing_integrity"
        case badRequest = "bad_request"
        case staleNonce = "stale_nonce"
        case wrongRealm = "wrong_realm"
        case unknownUser = "unknown_user"
        case expired
        case badIntegrity = "bad_integrity"
        case wrongCredentials = "wrong_credentials"
    }

    public enum Drop: String, CaseIterable, Sendable {
        case noAllocation = "no_allocation"
        case noPermission = "no_permission"
        case noChannel = "no_channel"
        case deniedPeer = "denied_peer"
        case quota
        case rateLimited = "rate_limited"
        case malformed
        case sendError = "send_error"
        case bufferFull = "buffer_full"
    }

    public init(requests: [[CounterID]], authFailures: [AuthFailure: CounterID], drops: [Drop: CounterID],
                allocationsCreated: CounterID, allocationsExpired: CounterID, allocationsDeleted: CounterID,
                allocationsActive: CounterID, permissionsCreated: CounterID, channelsBound: CounterID,
                relayedPackets: (CounterID, CounterID), relayedBytes: (CounterID, CounterID)) {
        self.requests = requests
        self.authFailures = authFailures
        self.drops = drops
        self.allocationsCreated = allocationsCreated
        self.allocationsExpired = allocationsExpired
        self.allocationsDeleted = allocationsDeleted
        self.allocationsActive = allocationsActive
        self.permissionsCreated = permissionsCreated
        self.channelsBound = channelsBound
        self.relayedPackets = relayedPackets
        self.relayedBytes = relayedBytes
    }

    /// Slots numbered 0… in a standalone block (tests).
    public static func sequential() -> TURNCounters {
        var next = 0
        func id() -> CounterID { defer { next += 1 }; return CounterID(index: next) }
        let requests = methods.map { _ in results.map { _ in id() } }
        var auth: [AuthFailure: CounterID] = [:]
        for a in AuthFailure.allCases { auth[a] = id() }
        var drops: [Drop: CounterID] = [:]
        for d in Drop.allCases { drops[d] = id() }
        return TURNCounters(requests: requests, authFailures: auth, drops: drops, allocationsCreated: id(),
                            allocationsExpired: id(), allocationsDeleted: id(), allocationsActive: id(),
                            permissionsCreated: id(), channelsBound: id(), relayedPackets: (id(), id()),
                            relayedBytes: (id(), id()))
    }
}

/// Method numbers re-exported so FerryTURN's users need not import FerryWire for them.
public typealias STUNMethods = STUN.Method
