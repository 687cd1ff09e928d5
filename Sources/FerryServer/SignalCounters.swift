import FerryCore
import FerrySignal

/// Signaling's counters, registered here with their names (docs/metrics.md). Reasons are the
/// protocol's own error codes (docs/signaling.md), so a refused peer and the metric agree.
struct SignalCounters {
    let registrations: CounterID
    let connected: CounterID
    let authFailures: [SignalErrorCode: CounterID]
    let routed: CounterID
    let forwarded: CounterID
    let dropped: [SignalErrorCode: CounterID]
    let queueDropped: CounterID
    let latency: HistogramID
    let queued: CounterID
    let subscriptionsRefused: [SubscriptionLimits.Scope: CounterID]

    static let authFailureCodes: [SignalErrorCode] = [.authFailed, .badProof, .tokenExpired, .wrongNetwork, .notAuthenticated]
    static let dropCodes: [SignalErrorCode] = [.badJSON, .badMessage, .unsupportedVersion, .unknownType, .payloadTooLarge,
                                               .notAuthenticated, .peerOffline, .rateLimited, .unavailable]

    init(registering registry: some CounterRegistry) {
        var auth: [SignalErrorCode: CounterID] = [:]
        for c in SignalCounters.authFailureCodes {
            auth[c] = registry.counter("ferry_signal_auth_failures_total", "Signaling connections refused at authentication, by reason.",
                                       labels: [("reason", c.rawValue)])
        }
        var dropped: [SignalErrorCode: CounterID] = [:]
        for c in SignalCounters.dropCodes {
            dropped[c] = registry.counter("ferry_signal_messages_dropped_total", "Signaling messages not delivered, by reason.",
                                          labels: [("reason", c.rawValue)])
        }
        authFailures = auth
        self.dropped = dropped
        registrations = registry.counter("ferry_signal_registrations_total", "Successful signaling authentications.")
        connected = registry.gauge("ferry_signal_peers_connected", "Authenticated signaling connections, summed over workers.")
        routed = registry.counter("ferry_signal_messages_routed_total", "Signaling messages routed to a connected peer.")
        forwarded = registry.counter("ferry_signal_messages_forwarded_total",
                                     "Signaling messages for a peer not connected here, sent on to the other instances over NATS.")
        queueDropped = registry.counter("ferry_signal_queue_dropped_total", "Messages dropped (oldest first) from a peer's full outbound queue.")
        latency = registry.histogram("ferry_signal_routing_latency_microseconds", "From a message's arrival to its queueing for the recipient.",
                                     bounds: [50, 100, 250, 500, 1000, 2000, 3000, 4000, 5000, 7500, 10000, 50000, 250_000, 1_000_000],
                                     labels: [])
        var refused: [SubscriptionLimits.Scope: CounterID] = [:]
        for s in SubscriptionLimits.Scope.allCases {
            refused[s] = registry.counter("ferry_signal_subscriptions_refused_total",
                                          "subscribe requests refused whole at a cap (answered subscription_limit), by which cap.",
                                          labels: [("limit", s.rawValue)])
        }
        subscriptionsRefused = refused
        queued = registry.gauge("ferry_signal_queued_messages", "Messages waiting in peers' outbound queues.")
    }
}
