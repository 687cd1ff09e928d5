import FerryCore
import FerryWire

/// The counters the TURN logic bumps, registered here with their names (docs/metrics.md).
public struct TURNCounters: Sendable {
    /// `requests[methodIndex][resultIndex]`; see `TURNCounters.methods` and `.results`.
    public let requests: [[CounterID]]
    public let authFailures: ReasonCounters<AuthFailure>
    public let drops: ReasonCounters<Drop>
    public let allocationFailures: ReasonCounters<RelayFailure>
    public let allocationsCreated: CounterID
    public let allocationsExpired: CounterID
    public let allocationsDeleted: CounterID
    public let allocationsActive: CounterID
    public let permissionsCreated: CounterID
    public let channelsBound: CounterID
    public let relayedPackets: (toPeer: CounterID, toClient: CounterID)
    public let relayedBytes: (toPeer: CounterID, toClient: CounterID)
    /// TURN to TURN inside ferryd (`turn.short_circuit`): datagrams between two allocations of
    /// one worker delivered without a socket in between.
    public let shortCircuited: CounterID
    public let shortCircuitHandoffFull: CounterID

    public static let methods: [UInt16] = [STUNMethods.binding, STUNMethods.allocate, STUNMethods.refresh,
                                           STUNMethods.createPermission, STUNMethods.channelBind]
    public static let results: [Int] = [0, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 508]

    public enum AuthFailure: Int, CounterReason {
        case missingIntegrity, badRequest, staleNonce, wrongRealm, unknownUser, expired, badIntegrity, wrongCredentials

        public var label: String {
            switch self {
            case .missingIntegrity: "missing_integrity"
            case .badRequest: "bad_request"
            case .staleNonce: "stale_nonce"
            case .wrongRealm: "wrong_realm"
            case .unknownUser: "unknown_user"
            case .expired: "expired"
            case .badIntegrity: "bad_integrity"
            case .wrongCredentials: "wrong_credentials"
            }
        }
    }

    public enum Drop: Int, CounterReason {
        case noAllocation, noPermission, noChannel, deniedPeer, quota, rateLimited, malformed, sendError, bufferFull

        public var label: String {
            switch self {
            case .noAllocation: "no_allocation"
            case .noPermission: "no_permission"
            case .noChannel: "no_channel"
            case .deniedPeer: "denied_peer"
            case .quota: "quota"
            case .rateLimited: "rate_limited"
            case .malformed: "malformed"
            case .sendError: "send_error"
            case .bufferFull: "buffer_full"
            }
        }
    }

    /// Why a relayed socket could not be opened (the Allocate is answered 508): counted by the
    /// service that opens sockets, which alone sees the errno.
    public enum RelayFailure: Int, CounterReason {
        /// Every port tried in the worker's block was taken (EADDRINUSE).
        case portsExhausted
        /// The relay address is not (or no longer) an address of this host (EADDRNOTAVAIL).
        case addressUnavailable
        /// The process or the system is out of file descriptors (EMFILE, ENFILE).
        case descriptorLimit
        /// The kernel is out of memory or buffers (ENOMEM, ENOBUFS).
        case noMemory
        /// Anything else (the log line names the errno).
        case other

        public var label: String {
            switch self {
            case .portsExhausted: "ports_exhausted"
            case .addressUnavailable: "address_unavailable"
            case .descriptorLimit: "fd_limit"
            case .noMemory: "no_memory"
            case .other: "other"
            }
        }
    }

    /// Registers every TURN series in `registry` (the server's at start; `SequentialCounters` in tests).
    public init(registering registry: some CounterRegistry) {
        requests = TURNCounters.methods.map { m in
            TURNCounters.results.map { r in
                registry.counter("ferry_stun_requests_total", "STUN/TURN requests answered, by method and result (ok or the error code).",
                                 labels: [("method", STUN.Method.name(m)), ("result", r == 0 ? "ok" : "\(r)")])
            }
        }
        authFailures = ReasonCounters { _, label in
            registry.counter("ferry_turn_auth_failures_total", "Requests that failed authentication, by reason.", labels: [("reason", label)])
        }
        drops = ReasonCounters { _, label in
            registry.counter("ferry_turn_drops_total", "Datagrams and messages dropped by the TURN relay, by reason.", labels: [("reason", label)])
        }
        allocationFailures = ReasonCounters { _, label in
            registry.counter("ferry_turn_allocations_failed_total", "Allocations refused with 508 because no relayed socket could be opened, by reason.",
                             labels: [("reason", label)])
        }
        allocationsCreated = registry.counter("ferry_turn_allocations_created_total", "Allocations created.")
        allocationsExpired = registry.counter("ferry_turn_allocations_expired_total", "Allocations removed because their lifetime ran out.")
        allocationsDeleted = registry.counter("ferry_turn_allocations_deleted_total", "Allocations deleted by a Refresh with lifetime 0.")
        allocationsActive = registry.gauge("ferry_turn_allocations_active", "Allocations alive now.")
        permissionsCreated = registry.counter("ferry_turn_permissions_created_total", "Permissions installed (refreshes not counted).")
        channelsBound = registry.counter("ferry_turn_channels_bound_total", "Channel bindings made (refreshes not counted).")
        let packets = "Datagrams relayed, by direction.", bytes = "Payload bytes relayed, by direction."
        relayedPackets = (registry.counter("ferry_turn_relayed_packets_total", packets, labels: [("direction", "to_peer")]),
                          registry.counter("ferry_turn_relayed_packets_total", packets, labels: [("direction", "to_client")]))
        relayedBytes = (registry.counter("ferry_turn_relayed_bytes_total", bytes, labels: [("direction", "to_peer")]),
                        registry.counter("ferry_turn_relayed_bytes_total", bytes, labels: [("direction", "to_client")]))
        shortCircuited = registry.counter("ferry_turn_short_circuit_packets_total",
                                          "Datagrams from one allocation to another of this ferryd delivered inside it (turn.short_circuit), not through the kernel.")
        shortCircuitHandoffFull = registry.counter("ferry_turn_short_circuit_handoff_full_total",
                                                   "Datagrams to an allocation on another worker that took the kernel's path because turn.short_circuit_handoff_bytes were in flight.")
    }

    /// Slots numbered 0… in a standalone block (tests).
    public static func sequential() -> TURNCounters { TURNCounters(registering: SequentialCounters()) }
}
