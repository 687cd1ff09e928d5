import FerryCore
import FerrySystem
import FerryConfig
import FerryWire
import FerryTURN
import Logging

/// TURN's part of the composition: credentials, the peer policy, nonces, and one TURN service
/// per worker.
extension Server {
    // MARK: TURN

    static func credentials(_ t: FerryConfig.TURN, realm: String) -> CredentialStore {
        var users: [String: CredentialStore.StaticKey] = [:]
        for u in t.users {
            if let p = u.password { users[u.name] = .password(p) } else if let k = u.key, let bytes = Crypto.unhex(k) { users[u.name] = .key(bytes) }
        }
        return CredentialStore(realm: realm, users: users, secrets: t.staticAuthSecrets)
    }

    /// The peer policy, with the relay's own relayed addresses (PeerPolicy).
    static func policy(_ config: FerryConfig) -> PeerPolicy {
        let p = config.policy, t = config.turn
        return PeerPolicy(allow: p.allow.compactMap { CIDR($0) }, deny: p.deny.compactMap { CIDR($0) },
                          ownRelayAddresses: [t.relayIPv4, t.relayIPv6, t.externalIPv4, t.externalIPv6].compactMap { $0 })
    }

    /// The nonce key: configured, else kept in the state directory, else random per process.
    func nonceSecret() throws -> [UInt8] {
        if !config.turn.nonceSecret.isEmpty { return Array(config.turn.nonceSecret.utf8) }
        if !config.server.stateDirectory.isEmpty {
            return try StateFiles.secret(directory: config.server.stateDirectory, name: "nonce.key", bytes: 32)
        }
        logger.notice("no turn.nonce_secret and no server.state_directory: nonces are valid for this process only (clients just retry after 438)")
        return Crypto.randomBytes(32)
    }

    func setUpTURN() throws {
        let t = config.turn
        let counters = TURNCounters(registering: metrics)
        turnCounters = counters
        let workers = engine.loops.count
        var settings = TURNSettings()
        settings.realm = t.realm
        settings.software = config.server.software.isEmpty ? nil : config.server.software
        settings.relayIPv4 = t.relayIPv4
        settings.relayIPv6 = t.relayIPv6
        settings.externalIPv4 = t.externalIPv4
        settings.externalIPv6 = t.externalIPv6
        settings.defaultLifetime = UInt32(t.defaultLifetime)
        settings.maxLifetime = UInt32(t.maxLifetime)
        settings.maxAllocations = (t.maxAllocations + workers - 1) / workers
        settings.maxAllocationsPerUser = t.maxAllocationsPerUser
        settings.maxPermissionsPerAllocation = t.maxPermissionsPerAllocation
        settings.maxChannelsPerAllocation = t.maxChannelsPerAllocation
        settings.bandwidthPerAllocation = UInt64(t.bandwidthPerAllocation)
        settings.bandwidthBurst = UInt64(t.bandwidthBurst)
        settings.unauthorizedPerSecond = Double(t.unauthorizedPerSecond)
        settings.unauthorizedBurst = Double(t.unauthorizedBurst)
        settings.strictChannelNumbers = t.strictChannelNumbers
        settings.shortCircuit = t.shortCircuit
        let credentials = Server.credentials(t, realm: t.realm)
        let policy = Server.policy(config)
        let nonces = NonceCodec(secret: try nonceSecret(), lifetimeSeconds: UInt64(t.nonceLifetime))
        let shared = TURNShared()
        // Each worker relays from its own contiguous block of the port range.
        let span = t.portMax - t.portMin + 1
        let block = max(1, span / workers)
        let histograms = TURNService.batchHistograms(registering: metrics)
        for loop in engine.loops {
            let lo = t.portMin + loop.index * block
            let hi = loop.index == workers - 1 ? t.portMax : lo + block - 1
            let worker = self.workers[loop.index]
            let turn = TURNService(worker: worker, maxDatagram: config.engine.maxDatagram, portRange: lo...max(lo, hi),
                                   batchHistograms: histograms, gso: config.engine.gso, relayBuffer: t.relayBufferBytes)
            let server = TURNServer(settings: settings, credentials: credentials, nonces: nonces, policy: policy,
                                    relays: turn, shared: shared, counters: counters, metrics: metrics.block(loop.index))
            turn.attach(server, sessionLog: sessionLog)
            turnServices.append(turn)
            loop.onSweep { now in
                server.sweep(now: now)
                turn.collectFastPath(now: now)
            }
        }
        if workers > 1 && t.shortCircuit {
            let hub = TURNHandoffHub(workers: workers, ports: t.portMin...t.portMax, block: block, budget: t.shortCircuitHandoffBytes)
            hub.services = turnServices
            for service in turnServices {
                service.handoff = hub
                service.outboxes = Array(repeating: nil, count: workers)
            }
        }
        warnIfRelayPortsAreEphemeral()
        logger.info("turn", metadata: ["realm": "\(t.realm)", "relay_ipv4": "\(t.relayIPv4.map { "\($0)" } ?? "-")",
                                       "relay_ipv6": "\(t.relayIPv6.map { "\($0)" } ?? "-")",
                                       "ports": "\(t.portMin)-\(t.portMax)", "users": "\(credentials.userCount)",
                                       "shared_secrets": "\(credentials.secretCount)",
                                       "allowed_peers": "\(config.policy.allow)", "denied_peers": "\(config.policy.deny)"])
    }

    /// The relay port range shares ports with the kernel's ephemeral range: any process's
    /// outgoing UDP socket there takes a port an allocation could have had (508 under load).
    /// Peers never reach those sockets (PeerPolicy: only live allocations' ports); the warning
    /// is about capacity and about whose port is whose. Logged at start and on each reload.
    func warnIfRelayPortsAreEphemeral() {
        let t = config.turn
        guard config.listeners.contains(where: { $0.service == .turn }),
              let ephemeral = KernelSettings.ephemeralPortRange(), ephemeral.overlaps(t.portMin...max(t.portMin, t.portMax)) else { return }
        logger.warning("the relay port range overlaps the kernel's ephemeral ports: other processes' sockets take relay ports; move one (sysctl -w net.ipv4.ip_local_port_range=\"32768 48999\", or turn.port_min/port_max)",
                       metadata: ["relay_ports": "\(t.portMin)-\(t.portMax)",
                                  "ip_local_port_range": "\(ephemeral.lowerBound)-\(ephemeral.upperBound)"])
    }
}
