import Synchronization

/// What signaling across instances counts (docs/metrics.md). Added to on cnats's threads and the
/// NATS thread, which are not workers with counter blocks of their own: relaxed atomics, read
/// when scraped. One add per NATS message, never on the relay path.
final class NATSStats: Sendable {
    enum Event: Int, CaseIterable {
        case messagesOut, messagesIn, delivered, remoteOffline, replaced, instanceLost, lateAnswers
        case connects, reconnects, disconnects
        case droppedUnavailable, droppedBacklog, droppedMaxPayload, droppedSlowConsumer, droppedMalformed
    }

    private final class Cell: Sendable { let value = Atomic<UInt64>(0) }
    private let values: [Cell]

    init() { values = Event.allCases.map { _ in Cell() } }

    func add(_ e: Event) { values[e.rawValue].value.add(1, ordering: .relaxed) }
    func value(_ e: Event) -> UInt64 { values[e.rawValue].value.load(ordering: .relaxed) }

    func register(_ metrics: MetricsRegistry, directory: NATSDirectory) {
        let v = { @Sendable (e: Event) -> Double in Double(self.value(e)) }
        metrics.computedCounter("ferry_signal_nats_messages_total", "NATS messages this instance published (out) and received (in).") {
            [(labels: "direction=\"out\"", value: v(.messagesOut)), (labels: "direction=\"in\"", value: v(.messagesIn))]
        }
        metrics.computedCounter("ferry_signal_nats_delivered_total", "Messages from other instances delivered to a peer connected here.") {
            [(labels: "", value: v(.delivered))]
        }
        metrics.computedCounter("ferry_signal_nats_offline_total",
                                "Forwarded messages that reached nobody (NATS's no-responders, or the holder had just lost the peer): answered peer_offline.") {
            [(labels: "", value: v(.remoteOffline))]
        }
        metrics.computedCounter("ferry_signal_nats_replaced_total", "Local sessions closed because the key authenticated at another instance.") {
            [(labels: "", value: v(.replaced))]
        }
        metrics.computedCounter("ferry_signal_nats_instance_lost_total",
                                "Watched keys announced offline because the instance holding them stopped sending heartbeats.") {
            [(labels: "", value: v(.instanceLost))]
        }
        metrics.computedCounter("ferry_signal_nats_late_answers_total", "No-responders answers that came after their message left the pending ring.") {
            [(labels: "", value: v(.lateAnswers))]
        }
        metrics.computedCounter("ferry_signal_nats_connection_events_total", "NATS connection changes, by event.") {
            [(labels: "event=\"connected\"", value: v(.connects)), (labels: "event=\"reconnected\"", value: v(.reconnects)),
             (labels: "event=\"disconnected\"", value: v(.disconnects))]
        }
        metrics.computedCounter("ferry_signal_nats_dropped_total", "Messages between instances not sent or not taken, by reason.") {
            [(labels: "reason=\"unavailable\"", value: v(.droppedUnavailable)), (labels: "reason=\"backlog\"", value: v(.droppedBacklog)),
             (labels: "reason=\"max_payload\"", value: v(.droppedMaxPayload)),
             (labels: "reason=\"slow_consumer\"", value: v(.droppedSlowConsumer)), (labels: "reason=\"malformed\"", value: v(.droppedMalformed))]
        }
        let link = directory.link
        metrics.computedGauge("ferry_signal_nats_connected", "1 while this instance is connected to NATS.") {
            [(labels: "", value: link.isConnected.load(ordering: .relaxed) ? 1 : 0)]
        }
        metrics.computedGauge("ferry_signal_nats_instances", "Other ferryd instances heard from (heartbeats) in the last 3 s.") {
            [(labels: "", value: Double(directory.instancesSeen))]
        }
        metrics.computedGauge("ferry_signal_nats_subscriptions", "NATS subjects this instance subscribes to (one per local peer, plus per network).") {
            [(labels: "", value: Double(link.subscriptionCount))]
        }
        metrics.computedGauge("ferry_signal_nats_backlog", "Publishes queued for the NATS thread (signal.nats.max_pending bounds it).") {
            [(labels: "", value: Double(link.backlog.load(ordering: .relaxed)))]
        }
    }
}
