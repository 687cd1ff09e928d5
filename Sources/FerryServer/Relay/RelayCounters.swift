import FerryCore
import FerryRelay

/// The native relay's series (docs/metrics.md): registered once, counted by the one worker that
/// serves the relay's port.
struct RelayCounters {
    let binds: ReasonCounters<BindResult>
    let drops: ReasonCounters<RelayDrop>
    let packets: CounterID
    let bytes: CounterID
    /// Gauges, set by the once-a-second sweep.
    let sessions: CounterID
    let sessionsActive: CounterID
    let indices: CounterID
    let expired: CounterID
    let streams: CounterID

    init(registering r: some CounterRegistry) {
        binds = ReasonCounters { _, label in
            r.counter("ferry_relay_binds_total", "Control requests on the native relay's port, by result (binds, challenges, refusals; stun_binding for STUN Binding).", labels: [("result", label)])
        }
        drops = ReasonCounters { _, label in
            r.counter("ferry_relay_drops_total", "WireGuard packets the native relay did not forward, by reason.", labels: [("reason", label)])
        }
        packets = r.counter("ferry_relay_packets_total", "WireGuard packets the native relay forwarded.")
        bytes = r.counter("ferry_relay_bytes_total", "Bytes of WireGuard packets the native relay forwarded.")
        sessions = r.gauge("ferry_relay_sessions", "Native-relay sessions with at least one end bound.")
        sessionsActive = r.gauge("ferry_relay_sessions_active", "Native-relay sessions with both ends bound (forwarding).")
        indices = r.gauge("ferry_relay_indices", "WireGuard receiver indices the native relay has learned and not yet forgotten.")
        streams = r.counter("ferry_relay_streams_total", "TCP and TLS connections that became native-relay stream ends (their first message a FERRY-BIND).")
        expired = r.counter("ferry_relay_ends_expired_total", "Session ends unbound after relay.idle_timeout_seconds without a bind or a packet.")
    }
}
