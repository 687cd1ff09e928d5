extension FerryConfig {
    /// `[relay]`: the native WireGuard relay (docs/relay-protocol.md), served by listeners with
    /// `service = "relay"`. Its credentials are minted and checked with `turn.static_auth_secrets`.
    public struct Relay: Sendable, Equatable {
        public var maxSessions = 100_000
        public var sessionsPerPeer = 64
        public var sessionsPerNetwork = 10_000
        public var idleTimeoutSeconds = 180
        /// Bytes per second per session, both directions together; 0: no limit.
        public var bandwidthPerSession = 0
        /// 0: one second's worth of `bandwidthPerSession`.
        public var bandwidthBurst = 0
        public var bindsPerSecond = 2000
        /// Stream side: bytes in flight between the relay's worker and the stream ends' workers.
        public var streamHandoffBytes = 4 << 20
    }

    static func parseRelay(_ t: ConfigReader) -> Relay {
        var r = Relay()
        r.maxSessions = t.int("max_sessions", default: 100_000, range: 1...10_000_000)
        r.sessionsPerPeer = t.int("sessions_per_peer", default: 64, range: 1...65535)
        r.sessionsPerNetwork = t.int("sessions_per_network", default: 10_000, range: 1...10_000_000)
        r.idleTimeoutSeconds = t.int("idle_timeout_seconds", default: 180, range: 30...86400)
        r.bandwidthPerSession = t.int("bandwidth_per_session", default: 0, range: 0...(1 << 40))
        r.bandwidthBurst = t.int("bandwidth_burst", default: 0, range: 0...(1 << 40))
        r.bindsPerSecond = t.int("binds_per_second", default: 2000, range: 1...1_000_000)
        r.streamHandoffBytes = t.int("stream_handoff_bytes", default: 4 << 20, range: 65536...(1 << 30))
        t.finish()
        return r
    }

    static let relayKeys: [ConfigKey] = [
        ConfigKey(default: "100000", allowed: "1–10000000", override: "", reload: .restart,
                  meaning: "native-relay sessions (a pair of WireGuard keys in a network, either end bound) this ferryd holds; past it a bind is answered 486", [
            .field("relay.max_sessions", \.relay.maxSessions, example: [("relay.max_sessions", "10")]),
        ]),
        ConfigKey(default: "64", allowed: "1–65535", override: "", reload: .restart,
                  meaning: "sessions one WireGuard key may have bound in one network (its partners through this relay)", [
            .field("relay.sessions_per_peer", \.relay.sessionsPerPeer, example: [("relay.sessions_per_peer", "4")]),
        ]),
        ConfigKey(default: "10000", allowed: "1–10000000", override: "", reload: .restart,
                  meaning: "sessions one network may hold", [
            .field("relay.sessions_per_network", \.relay.sessionsPerNetwork, example: [("relay.sessions_per_network", "100")]),
        ]),
        ConfigKey(default: "180", allowed: "30–86400", override: "", reload: .restart,
                  meaning: "seconds an end of a session stays bound without a bind or a packet from it (WireGuard's persistent keepalive, or the agent's refresh, keeps it)", [
            .field("relay.idle_timeout_seconds", \.relay.idleTimeoutSeconds, example: [("relay.idle_timeout_seconds", "60")]),
        ]),
        ConfigKey(default: "0 (no limit)", allowed: "bytes/s", override: "", reload: .restart,
                  meaning: "bytes per second one session relays, both directions together, and its burst (0: one second's worth); the excess is dropped and counted (`bandwidth`)", [
            .field("relay.bandwidth_per_session", \.relay.bandwidthPerSession, example: [("relay.bandwidth_per_session", "125000")]),
            .field("relay.bandwidth_burst", \.relay.bandwidthBurst, example: [("relay.bandwidth_burst", "250000")]),
        ]),
        ConfigKey(default: "2000", allowed: "1–1000000", override: "", reload: .restart,
                  meaning: "bind requests per second the relay answers, from everyone together; past it they get no answer and are counted (`rate_limited`)", [
            .field("relay.binds_per_second", \.relay.bindsPerSecond, example: [("relay.binds_per_second", "50")]),
        ]),
        ConfigKey(default: "4194304", allowed: "65536–1073741824", override: "", reload: .restart,
                  meaning: "stream side (session ends bound over TCP or TLS): bytes of packets in flight each way between the relay's worker and the stream ends' workers; past it packets are dropped and counted (`handoff_full`)", [
            .field("relay.stream_handoff_bytes", \.relay.streamHandoffBytes, example: [("relay.stream_handoff_bytes", "1048576")]),
        ]),
    ]
}
