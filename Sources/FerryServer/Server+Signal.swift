#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem
import FerryConfig
import FerryWire
import FerryTURN
import FerryTLS
import FerrySignal
import FerryPreflight
import Logging
import Foundation
import Synchronization

/// Signaling's part of the composition: the server key, the policy, JWKS from a file or a URL.
extension Server {
    // MARK: Signaling

    /// The server's static X25519 key: configured, else kept in the state directory, else made
    /// up for this process (peers then see a new server key after a restart).
    func signalServerKey() throws -> SignalServerKey {
        if let k = Crypto.unhex(config.signal.serverKey), k.count == 32 { return SignalServerKey(privateKey: k) }
        if !config.server.stateDirectory.isEmpty {
            return SignalServerKey(privateKey: try StateFiles.secret(directory: config.server.stateDirectory, name: "signal.key", bytes: 32))
        }
        logger.notice("no signal.server_key and no server.state_directory: the signaling key is made up for this process")
        return SignalServerKey(privateKey: X25519.keyPair().privateKey)
    }

    func makeSignalPolicy() throws -> SignalPolicy {
        let s = config.signal
        var jwt: JWTVerifier?
        // Bytes, not Data: Data's enum storage hides its buffer pointer from LeakSanitizer, which
        // then reports a JWKS held here for the whole run as leaked (docs/testing.md).
        var jwks: [UInt8]?
        if !s.jwksFile.isEmpty {
            guard let data = FileManager.default.contents(atPath: s.jwksFile) else {
                throw SystemError(call: "read signal.jwks_file \(s.jwksFile)", errno: ENOENT)
            }
            jwks = [UInt8](data)
        } else if !s.jwksURL.isEmpty {
            // The keys last fetched from this URL (fetches run off the loop: `startJWKSFetch`);
            // until a first fetch from a new URL succeeds, the keys in use stay.
            if let fetched = self.jwks, fetched.url == s.jwksURL { jwks = fetched.data } else { jwks = jwksInUse }
        }
        if let data = jwks {
            jwt = try JWTVerifier(jwks: data, issuer: s.jwtIssuer, audience: s.jwtAudience, networkClaim: s.networkClaim,
                                  peerClaim: s.peerClaim.isEmpty ? nil : s.peerClaim)
        }
        jwksInUse = jwks
        if !s.jwksURL.isEmpty && jwt == nil {
            logger.warning("no JWKS from the issuer yet: JWTs are refused until a fetch succeeds", metadata: ["jwks_url": "\(s.jwksURL)"])
        }
        var relays: [RelayHandout] = []
        if !s.selfRelayURLs.isEmpty, let secret = config.turn.staticAuthSecrets.first {
            relays.append(RelayHandout(region: "self", urls: s.selfRelayURLs, secret: secret))
        }
        relays += s.relays.map { RelayHandout(region: $0.region, urls: $0.urls, secret: $0.secret) }
        logger.info("signaling", metadata: ["server_key": "\(Base64.std(signalKey?.publicKey ?? []))", "token_secrets": "\(s.tokenSecrets.count)",
                                            "jwks_keys": "\(jwt?.keyCount ?? 0)", "relays": "\(relays.map(\.region))"])
        return SignalPolicy(serverKey: signalKey!, tokenSecrets: s.tokenSecrets, jwt: jwt, maxPayload: s.maxPayload,
                            messagesPerSecond: Double(s.messagesPerSecond), messageBurst: Double(s.messageBurst),
                            bytesPerSecond: Double(s.bytesPerSecond), relays: relays, relayTTL: UInt64(s.relayTTLSeconds),
                            pingInterval: s.pingIntervalSeconds, preauthMessages: s.preauthMessages, preauthBytes: s.preauthBytes)
    }

    // MARK: JWKS

    /// One bounded, blocking fetch (on whatever thread calls it: the start, or a fetch thread).
    static func fetch(url: String, caFile: String, timeout: Int) -> Result<[UInt8], TLSError> {
        Result { () throws(TLSError) in try HTTPSFetch.get(url, caFile: caFile.isEmpty ? nil : caFile, timeoutSeconds: timeout) }
    }

    /// Fetches the JWKS on a thread of its own; the result comes back through the control loop's
    /// mailbox, so /metrics, /healthz and the watchdog never wait for an issuer.
    func startJWKSFetch() {
        if let t = jwksRetry { control.cancel(t) }
        jwksRetry = nil
        let s = config.signal
        guard s.enabled, !s.jwksURL.isEmpty else { return }
        jwksGeneration += 1
        let generation = jwksGeneration
        let (url, caFile, timeout) = (s.jwksURL, s.jwksCAFile, s.jwksTimeoutSeconds)
        let control = self.control
        Thread.detachNewThread { [self] in
            let result = Server.fetch(url: url, caFile: caFile, timeout: timeout)
            control.execute { _ in
                // A newer fetch (a later reload) supersedes this one.
                guard generation == self.jwksGeneration else { return }
                self.applyJWKSFetch(result, url: url)
                if self.config.signal.jwksURL == url, case .success = result { self.pushSignalPolicy() }
            }
        }
    }

    /// Keeps a fetched JWKS if it parses; otherwise keeps the keys in use, counts, logs, and
    /// tries again in `jwksRetrySeconds`.
    func applyJWKSFetch(_ result: Result<[UInt8], TLSError>, url: String) {
        let block = metrics.block(engine.loops.count)
        var failure: String?
        switch result {
        case .success(let bytes):
            let s = config.signal
            do {
                let check = try JWTVerifier(jwks: bytes, issuer: s.jwtIssuer, audience: s.jwtAudience,
                                            networkClaim: s.networkClaim, peerClaim: nil)
                jwks = (url, bytes)
                jwksFetchedAt.value.store(Int64(wallClockSeconds()), ordering: .relaxed)
                if let c = jwksCounters?.ok { block.add(c) }
                logger.info("jwks fetched", metadata: ["jwks_url": "\(url)", "keys": "\(check.keyCount)"])
                return
            } catch {
                failure = "\(error)"
            }
        case .failure(let error):
            failure = error.message
        }
        if let c = jwksCounters?.failed { block.add(c) }
        logger.error("jwks fetch failed; keeping the keys in use", metadata: [
            "jwks_url": "\(url)", "error": "\(failure ?? "")", "retry_seconds": "\(Server.jwksRetrySeconds)"])
        jwksRetry = control.schedule(after: Server.jwksRetrySeconds * 1_000_000_000) { [unowned self] in self.startJWKSFetch() }
    }

    /// Builds the signaling policy from the running config and hands it to every worker.
    func pushSignalPolicy() {
        do {
            let policy = try makeSignalPolicy()
            for loop in engine.loops {
                loop.execute { [self] l in self.signalWorkers.all[l.index].update(policy: policy) }
            }
        } catch {
            logger.error("signaling policy not updated", metadata: ["error": "\(error)"])
        }
    }

    /// `[signal.nats]`: the directory spanning instances, delivering into the workers' loops.
    func makeNATSDirectory(_ local: SignalHub) throws -> NATSDirectory {
        let n = config.signal.nats
        guard let subjects = ClusterSubjects(prefix: n.subjectPrefix, instance: local.instance) else {
            throw SystemError(call: "signal.nats.subject_prefix \(n.subjectPrefix)", errno: EINVAL)
        }
        let settings = NATSSettings(servers: n.servers, name: "ferryd \(local.instance)", user: n.user, password: n.password, token: n.token,
                                    credentialsFile: n.credentialsFile, caFile: n.caFile, certFile: n.certFile, keyFile: n.keyFile,
                                    maxPending: n.maxPending, subscriptionPending: n.subscriptionPending,
                                    reconnectWaitMillis: Int64(n.reconnectWaitMillis))
        let link = try NATSLink(settings: settings, logger: logger)
        let (loops, registry) = (engine.loops, signalWorkers)
        let directory = NATSDirectory(hub: local, link: link, subjects: subjects, stats: NATSStats(), workers: loops.count) { worker, batch in
            loops[worker].execute { l in registry.all[l.index].receive(batch) }
        }
        directory.stats.register(metrics, directory: directory)
        state.nats.withLock { $0 = link }
        natsDirectory = directory
        logger.info("signaling across instances over NATS", metadata: ["instance": "\(local.instance)", "servers": "\(n.servers)",
                                                                    "subject_prefix": "\(n.subjectPrefix)"])
        return directory
    }

    func registerSignalMetrics(_ hub: any SignalDirectory) -> SignalCounters {
        jwksCounters = (metrics.counter("ferry_signal_jwks_fetches_total", "Fetches of the issuer's JWKS (signal.jwks_url), by result.",
                                        labels: [("result", "ok")]),
                        metrics.counter("ferry_signal_jwks_fetches_total", "Fetches of the issuer's JWKS (signal.jwks_url), by result.",
                                        labels: [("result", "failed")]))
        let fetchedAt = jwksFetchedAt
        metrics.computedGauge("ferry_signal_jwks_fetched_timestamp_seconds", "Unix time of the last successful JWKS fetch.") {
            let v = fetchedAt.value.load(ordering: .relaxed)
            return v > 0 ? [(labels: "", value: Double(v))] : []
        }
        metrics.computedGauge("ferry_signal_peers_registered", "Peers authenticated on signaling now (all workers).") {
            [(labels: "", value: Double(hub.count))]
        }
        metrics.computedGauge("ferry_signal_subscriptions", "Presence subscriptions held now (watcher × key, all workers).") {
            [(labels: "", value: Double(hub.subscriptionCount))]
        }
        return SignalCounters(registering: metrics)
    }
}
