import FerryCore
import FerryConfig
import FerryRelay

/// The native relay's part of the composition: one service, on the worker its sockets go to.
extension Server {
    func relayService(_ worker: Int) -> RelayService {
        if let relay { return relay }
        let r = config.relay
        var limits = RelaySessions.Limits()
        limits.maxSessions = r.maxSessions
        limits.sessionsPerPeer = r.sessionsPerPeer
        limits.sessionsPerNetwork = r.sessionsPerNetwork
        limits.idleTimeout = UInt32(r.idleTimeoutSeconds)
        limits.bandwidth = Double(r.bandwidthPerSession)
        limits.burst = Double(r.bandwidthBurst > 0 ? r.bandwidthBurst : r.bandwidthPerSession)
        let service = RelayService(worker: workers[worker], limits: limits, secrets: config.turn.staticAuthSecrets,
                                   bindsPerSecond: Double(r.bindsPerSecond), counters: RelayCounters(registering: metrics))
        relay = service
        logger.info("native relay", metadata: ["max_sessions": "\(r.maxSessions)", "sessions_per_peer": "\(r.sessionsPerPeer)",
                                               "idle_timeout_seconds": "\(r.idleTimeoutSeconds)", "shared_secrets": "\(config.turn.staticAuthSecrets.count)"])
        return service
    }
}
