import FerryCore
import FerryWire

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
