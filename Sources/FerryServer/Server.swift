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

/// The composition of one `ferryd`: the engine and its listeners, the admin endpoint, systemd
/// readiness and watchdog, reload and graceful drain. Runs its control loop on the calling
/// thread; workers run on their own threads.
///
/// `@unchecked Sendable`: worker tasks posted through `EventLoop.execute` reach their own
/// worker's entry of `workers` and `turnServices` (static after set-up; each entry used only on
/// its worker's thread); everything else is used on the control thread.
public final class Server: @unchecked Sendable {
    /// Re-reads the configuration for a reload (file, environment and flags applied).
    public typealias ConfigSource = () throws -> FerryConfig

    var config: FerryConfig
    let reloadSource: ConfigSource?
    let logger: Logger
    private let levelBox: LogLevelBox
    /// Control-thread state (the main thread's loop): ready/draining, admin, timers.
    let control: EventLoop
    let engine: Engine
    let metrics: MetricsRegistry
    private var admin: AdminServer?
    /// The `PortLock`s of the listening ports: open until the process exits.
    private var portLocks: [FileDescriptor] = []
    private var signals: SignalSource?
    /// One per event loop: sockets, connections and the services registered on them.
    var workers: [Worker] = []
    /// One per worker when any listener serves TURN.
    var turnServices: [TURNService] = []
    lazy var sessionLog = SessionLog(enabled: config.log.sessions)
    var turnCounters: TURNCounters?
    /// The TLS contexts in use (control thread); workers get their own reference on reload.
    var tlsContexts: TLSContextSet?
    private let certificateExpiry = UnixSecondsBox()
    /// A Unix time written on the control thread and read by scrape-time gauges.
    final class UnixSecondsBox: Sendable {
        let value = Atomic<Int64>(0)
    }
    private var certificateReloads: (ok: CounterID, failed: CounterID)?
    let signalWorkers = SignalWorkers()
    private var signalKey: SignalServerKey?
    var boundAddresses: [String: SocketAddress] = [:]
    let state = ServerState()
    private var drainDeadline: UInt64 = 0
    /// Per worker: the monotonic time the worker last answered a watchdog ping.
    private let heartbeats: Heartbeats
    private var reloadCounters: (ok: CounterID, failed: CounterID)?
    /// The JWKS last fetched from `signal.jwks_url` (control thread). Fetches run on a thread of
    /// their own and post their result back to the control loop; only the newest counts.
    private var jwks: (url: String, data: [UInt8])?
    /// The JWKS the running signaling policy verifies with (from a file or a fetch).
    private var jwksInUse: [UInt8]?
    private var jwksGeneration = 0
    private var jwksRetry: TimerID?
    private var jwksCounters: (ok: CounterID, failed: CounterID)?
    private let jwksFetchedAt = UnixSecondsBox()
    /// The admin API's (AdminAPI.swift): the bearer token, refusals counted, the last reload,
    /// and the status page's history (control thread).
    var adminToken: [UInt8]?
    var adminUnauthorized: CounterID?
    var lastReload: (at: UInt64, ok: Bool, origin: String)?
    var history = StatusHistory()
    /// After a failed fetch, the next try.
    static let jwksRetrySeconds: UInt64 = 30

    /// Readiness, shared with the scrape-time gauges.
    final class ServerState: Sendable {
        let ready = Atomic<Bool>(false)
        let draining = Atomic<Bool>(false)
        let lastReloadOK = Atomic<Bool>(true)
        let configLoadedAt = Atomic<Int64>(0)
    }

    /// Per worker, the monotonic time it last answered a watchdog ping (written by the worker).
    final class Heartbeats: Sendable {
        let beats: Mutex<[UInt64]>
        init(workers: Int) { beats = Mutex([UInt64](repeating: monotonicNanos(), count: workers)) }
    }

    public init(config: FerryConfig, reload: ConfigSource?, logger: Logger, levelBox: LogLevelBox) throws {
        self.config = config
        self.reloadSource = reload
        self.logger = logger
        self.levelBox = levelBox
        let workers = config.workerCount
        control = try EventLoop(index: workers, name: "ferry-ctl")
        engine = try Engine(workers: workers, pin: config.server.pinWorkers)
        metrics = MetricsRegistry(blocks: workers + 1)
        heartbeats = Heartbeats(workers: workers)
    }

    /// What `ferry config check` checks too (Preflight): refuses to start on a certificate that
    /// does not load, an unusable state directory, a relay address this host does not have, or a
    /// placeholder secret; documentation values are logged (accepted in a lab file).
    func preflight() throws {
        let host = Preflight.host(config)
        for w in host.warnings { logger.warning("config: \(w)") }
        let placeholders = Preflight.placeholders(config)
        if !config.server.lab {
            for e in placeholders.examples { logger.warning("config: \(e) (server.lab = true accepts it)") }
        }
        let refused = host.issues + placeholders.secrets
        if !refused.isEmpty { throw Preflight.Refusal(issues: refused) }
    }

    /// Addresses the listeners are bound to (first worker's socket), by listener name; "admin" too.
    public var addresses: [String: SocketAddress] { boundAddresses }

    /// Binds everything, starts the workers, announces readiness, and serves until SIGTERM or
    /// SIGINT and the drain are over. Returns the process exit code.
    public func run() throws -> Int32 {
        SignalSource.blockProcessSignals()
        let files = raiseOpenFileLimit()
        if files < UInt64(config.turn.maxAllocations) * 2 && config.listeners.contains(where: { $0.service == .turn }) {
            logger.warning("open-file limit is below twice turn.max_allocations; raise LimitNOFILE",
                           metadata: ["limit": "\(files)", "max_allocations": "\(config.turn.maxAllocations)"])
        }
        try preflight()
        try setUp()
        try engine.start()
        state.ready.store(true, ordering: .relaxed)
        let summary = "serving \(config.listeners.count) listener(s) on \(engine.loops.count) worker(s)"
        logger.info("ferryd ready", metadata: ["workers": "\(engine.loops.count)", "version": "\(FerryVersion.string)"])
        Systemd.notify("READY=1\nSTATUS=\(summary)")
        startWatchdog()
        startStatusHistory()
        control.run()
        engine.stopAndJoin()
        for w in workers { w.close() }
        admin?.close()
        logger.info("ferryd stopped")
        return 0
    }

    private func setUp() throws {
        var registry = ListenerRegistry(passed: Systemd.takeListenedSockets(), logger: logger)
        // Kept whether set-up succeeds or not (a failed start exits with them held).
        defer { portLocks = Array(registry.locks.values) }
        if registry.activated { logger.info("socket activation", metadata: ["names": "\(registry.passed.keys.sorted())"]) }
        registerGlobalMetrics()
        workers = engine.loops.map { loop in
            Worker(loop: loop, metrics: metrics.block(loop.index), batchSize: config.engine.batchSize, maxDatagram: config.engine.maxDatagram)
        }
        let turn = config.listeners.contains(where: { $0.service == .turn })
        if turn { try setUpTURN() }
        if turn || config.listeners.contains(where: { $0.transport != .udp }) { try setUpStreams() }
        for listener in config.listeners where listener.transport != .udp {
            let (sockets, shared) = try registry.tcpSockets(listener, workers: engine.loops.count)
            boundAddresses[listener.name] = try Sockets.localAddress(sockets[0].raw)
            for (worker, fd) in sockets.enumerated() {
                try workers[worker].addStreamListener(fd: fd, kind: listener.transport == .tls ? .tls : .tcp, shared: shared)
            }
            logger.info("listening", metadata: ["listener": "\(listener.name)", "service": "\(listener.service.rawValue)",
                                                "transport": "\(listener.transport.rawValue)",
                                                "address": "\(boundAddresses[listener.name].map { "\($0)" } ?? "-")",
                                                "shared_socket": "\(shared)"])
        }
        for listener in config.listeners where listener.transport == .udp {
            // GRO coalesces trains only where a flow can be forwarded whole; TURN parses each
            // datagram, so its sockets read one datagram per slot.
            let options = Sockets.UDPOptions(reusePort: true, receiveBuffer: config.engine.udpReceiveBuffer,
                                             sendBuffer: config.engine.udpSendBuffer,
                                             gro: config.engine.gro && listener.service == .forward)
            let sockets = try registry.udpSockets(listener, workers: engine.loops.count, options: options)
            if let first = sockets.first { boundAddresses[listener.name] = try Sockets.localAddress(first.fd.raw) }
            for (worker, fd) in sockets {
                // Each service registers for the first bytes it reads (DatagramDemux).
                let counters = UDPListenerCounters(registering: metrics, listener: listener.name)
                switch listener.service {
                case .forward:
                    let local = try Sockets.localAddress(fd.raw)
                    let forwarder = UDPForwarder(target: listener.forwardTo!, ipv6Socket: !local.ip.isIPv4, metrics: metrics.block(worker))
                    try workers[worker].addDatagramSocket(fd: fd, counters: counters, services: [(forwarder, [0...255])], gro: config.engine.gro)
                case .turn:
                    let turn = turnServices[worker]
                    try workers[worker].addDatagramSocket(fd: fd, counters: counters, services: [(turn, TURNService.datagramRanges)],
                                                          fallback: turn)
                }
            }
            logger.info("listening", metadata: ["listener": "\(listener.name)", "service": "\(listener.service.rawValue)",
                                                "address": "\(boundAddresses[listener.name].map { "\($0)" } ?? "-")",
                                                "sockets": "\(sockets.count)"])
        }
        adminToken = try Server.adminToken(config.admin)
        adminUnauthorized = metrics.counter("ferry_admin_unauthorized_total",
                                            "Admin API requests refused for a missing or wrong bearer token (or with no admin.token set).")
        if let fd = try registry.adminSocket(config.admin.address) {
            let block = metrics.block(engine.loops.count)
            let counters = AdminServer.Counters(registering: metrics)
            admin = try AdminServer(fd: fd, loop: control, metrics: block, maxConnections: config.admin.maxConnections,
                                    timeoutSeconds: config.admin.requestTimeoutSeconds, counters: counters,
                                    route: { [unowned self] head in self.route(head) })
            if let a = admin?.address {
                boundAddresses["admin"] = a
                logger.info("admin endpoint", metadata: ["address": "\(a)"])
            }
        }
        registry.closeUnclaimed()
        signals = try SignalSource(loop: control) { [unowned self] signal in self.handleSignal(signal) }
    }

    /// Stream connections on every worker (TURN over TCP/TLS, HTTPS, signaling): TLS contexts,
    /// limits, and the services a sniffed connection is handed to. Signaling registers here, not
    /// on TURN: a connection reaches it through the worker, whatever else the worker serves.
    private func setUpStreams() throws {
        let workers = engine.loops.count
        let streamCounters = StreamCounters(registering: metrics)
        registerCertificateMetrics()
        // A plain TCP listener works without certificates (TLS sniffed there is then refused).
        if config.listeners.contains(where: { $0.transport != .udp }) && (!config.tls.certificates.isEmpty || config.tls.selfSigned) {
            tlsContexts = try loadTLS(initial: true)
        }
        let state = self.state
        let httpsRoute: HTTPSession.Route = { head in Server.healthRoute(head, state: state) }
        // One instance id per process: the entries this ferryd registers carry it (docs/signaling.md).
        let hub: any SignalDirectory = SignalHub(instance: Crypto.hex(Crypto.randomBytes(8)))
        var signalPolicy: SignalPolicy?
        var signalCounters: SignalCounters?
        if config.signal.enabled {
            signalKey = try signalServerKey()
            signalCounters = registerSignalMetrics(hub)
            // The first fetch runs here, before anything serves (bounded by jwks_timeout_seconds);
            // a failure starts without JWT keys and retries in the background.
            let s = config.signal
            if !s.jwksURL.isEmpty {
                applyJWKSFetch(Server.fetch(url: s.jwksURL, caFile: s.jwksCAFile, timeout: s.jwksTimeoutSeconds), url: s.jwksURL)
            }
            signalPolicy = try makeSignalPolicy()
        }
        for loop in engine.loops {
            let worker = self.workers[loop.index]
            let streamSettings = StreamSettings(
                contexts: tlsContexts, idleTimeoutSeconds: config.stream.idleTimeoutSeconds,
                handshakeTimeoutSeconds: config.tls.handshakeTimeoutSeconds, requestTimeoutSeconds: config.stream.requestTimeoutSeconds,
                writeLimit: config.stream.writeBufferBytes,
                maxConnections: (config.stream.maxConnections + workers - 1) / workers,
                maxPerSource: config.stream.maxConnectionsPerSource,
                handshakesPerSecond: config.tls.handshakesPerSecond, handshakeBurst: config.tls.handshakeBurst,
                route: httpsRoute, counters: streamCounters)
            streamSettings.turn = turnServices.isEmpty ? nil : turnServices[loop.index]
            if let signalPolicy, let signalCounters {
                let sw = SignalWorker(index: loop.index, loop: loop, hub: hub, policy: signalPolicy, counters: signalCounters,
                                      metrics: metrics.block(loop.index), queueLimit: config.signal.queueMessages,
                                      authTimeoutSeconds: config.signal.authTimeoutSeconds, registry: signalWorkers, loops: engine.loops,
                                      sessionLog: sessionLog)
                signalWorkers.all.append(sw)
                streamSettings.signal = sw
                streamSettings.allowPlaintextSignal = config.signal.allowPlaintext
                streamSettings.maxWebSocketMessage = config.signal.maxMessage
            }
            worker.configureStreams(streamSettings)
        }
    }

    // MARK: Metrics

    private func registerGlobalMetrics() {
        let state = self.state
        let workers = engine.loops.count
        let start = Double(wallClockSeconds())
        metrics.computedGauge("ferry_build_info", "Always 1; the version label says which release runs.") {
            [(labels: "version=\"\(FerryVersion.string)\"", value: 1)]
        }
        metrics.computedGauge("ferry_ready", "1 when every listener is live and the server is not draining.") {
            [(labels: "", value: state.ready.load(ordering: .relaxed) && !state.draining.load(ordering: .relaxed) ? 1 : 0)]
        }
        metrics.computedGauge("ferry_draining", "1 while a graceful stop is in progress.") {
            [(labels: "", value: state.draining.load(ordering: .relaxed) ? 1 : 0)]
        }
        metrics.computedGauge("ferry_workers", "Worker threads running event loops.") { [(labels: "", value: Double(workers))] }
        metrics.computedGauge("ferry_start_time_seconds", "Unix time the process started.") { [(labels: "", value: start)] }
        reloadCounters = (metrics.counter("ferry_reloads_total", "Configuration reloads (SIGHUP or the admin API), by result.", labels: [("result", "ok")]),
                          metrics.counter("ferry_reloads_total", "Configuration reloads (SIGHUP or the admin API), by result.", labels: [("result", "failed")]))
        state.configLoadedAt.store(Int64(start), ordering: .relaxed)
        metrics.computedGauge("ferry_config_last_reload_successful", "1 unless the last reload failed (the running configuration then stays).") {
            [(labels: "", value: state.lastReloadOK.load(ordering: .relaxed) ? 1 : 0)]
        }
        metrics.computedGauge("ferry_config_last_reload_success_timestamp_seconds", "Unix time the running configuration was loaded (start or reload).") {
            [(labels: "", value: Double(state.configLoadedAt.load(ordering: .relaxed)))]
        }
        let cap = Double(config.turn.maxAllocations)
        if config.listeners.contains(where: { $0.service == .turn }) {
            metrics.computedGauge("ferry_turn_allocations_max", "turn.max_allocations: the cap ferry_turn_allocations_active is held to.") {
                [(labels: "", value: cap)]
            }
        }
    }

    // MARK: Admin routes

    /// `/healthz` and `/readyz`: served by the admin endpoint and by HTTPS on shared TLS ports.
    static func healthRoute(_ head: HTTPRequestHead, state: ServerState) -> HTTPAnswer {
        if head.method != "GET" && head.method != "HEAD" {
            return HTTPAnswer(status: 405, body: "method not allowed\n", headers: [("Allow", "GET, HEAD")])
        }
        switch head.path {
        case "/healthz":
            return HTTPAnswer(status: 200, body: "ok\n")
        case "/readyz":
            if state.draining.load(ordering: .relaxed) { return HTTPAnswer(status: 503, body: "draining\n") }
            if !state.ready.load(ordering: .relaxed) { return HTTPAnswer(status: 503, body: "starting\n") }
            return HTTPAnswer(status: 200, body: "ready\n")
        default:
            return HTTPAnswer(status: 404, body: "not found\n")
        }
    }

    // MARK: Signaling

    /// The server's static X25519 key: configured, else kept in the state directory, else made
    /// up for this process (peers then see a new server key after a restart).
    private func signalServerKey() throws -> SignalServerKey {
        if let k = Crypto.unhex(config.signal.serverKey), k.count == 32 { return SignalServerKey(privateKey: k) }
        if !config.server.stateDirectory.isEmpty {
            return SignalServerKey(privateKey: try StateFiles.secret(directory: config.server.stateDirectory, name: "signal.key", bytes: 32))
        }
        logger.notice("no signal.server_key and no server.state_directory: the signaling key is made up for this process")
        return SignalServerKey(privateKey: X25519.keyPair().privateKey)
    }

    private func makeSignalPolicy() throws -> SignalPolicy {
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
                            pingInterval: s.pingIntervalSeconds)
    }

    // MARK: JWKS

    /// One bounded, blocking fetch (on whatever thread calls it: the start, or a fetch thread).
    private static func fetch(url: String, caFile: String, timeout: Int) -> Result<[UInt8], TLSError> {
        Result { () throws(TLSError) in try HTTPSFetch.get(url, caFile: caFile.isEmpty ? nil : caFile, timeoutSeconds: timeout) }
    }

    /// Fetches the JWKS on a thread of its own; the result comes back through the control loop's
    /// mailbox, so /metrics, /healthz and the watchdog never wait for an issuer.
    private func startJWKSFetch() {
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
    private func applyJWKSFetch(_ result: Result<[UInt8], TLSError>, url: String) {
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
    private func pushSignalPolicy() {
        do {
            let policy = try makeSignalPolicy()
            for loop in engine.loops {
                loop.execute { [self] l in self.signalWorkers.all[l.index].update(policy: policy) }
            }
        } catch {
            logger.error("signaling policy not updated", metadata: ["error": "\(error)"])
        }
    }

    private func registerSignalMetrics(_ hub: any SignalDirectory) -> SignalCounters {
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
        return SignalCounters(registering: metrics)
    }

    // MARK: TLS

    /// Builds TLS contexts from the configured files (or a fresh self-signed certificate).
    private func loadTLS(initial: Bool) throws -> TLSContextSet {
        var pairs: [CertificatePair] = []
        for c in config.tls.certificates { pairs.append(try CertificatePair.load(certificate: c.certificate, key: c.key)) }
        if pairs.isEmpty && config.tls.selfSigned {
            if initial || tlsContexts == nil {
                pairs.append(try CertificatePair.selfSigned(name: "localhost"))
            } else {
                return tlsContexts!  // keep the self-signed certificate across reloads
            }
        }
        let set = try TLSContextSet(certificates: pairs, alpn: ["stun.turn", "http/1.1"], minimumTLS13: config.tls.minVersion == "1.3")
        certificateExpiry.value.store(set.earliestExpiry, ordering: .relaxed)
        for p in pairs {
            logger.info("tls certificate", metadata: ["source": "\(p.source)", "names": "\(p.names)", "not_after": "\(p.notAfter)"])
        }
        return set
    }

    private func reloadTLS() {
        guard !turnServices.isEmpty, config.listeners.contains(where: { $0.transport != .udp }),
              !config.tls.certificates.isEmpty || config.tls.selfSigned else { return }
        let block = metrics.block(engine.loops.count)
        do {
            let set = try loadTLS(initial: false)
            tlsContexts = set
            for loop in engine.loops {
                loop.execute { [self] l in self.workers[l.index].updateTLS(set) }
            }
            if let c = certificateReloads?.ok { block.add(c) }
        } catch {
            if let c = certificateReloads?.failed { block.add(c) }
            logger.error("certificate reload failed; keeping the certificates in use", metadata: ["error": "\(error)"])
        }
    }

    /// The TLS series that belong to the server rather than a connection: reloads and expiry.
    private func registerCertificateMetrics() {
        certificateReloads = (metrics.counter("ferry_tls_certificate_reloads_total", "Certificate reloads on SIGHUP, by result.", labels: [("result", "ok")]),
                              metrics.counter("ferry_tls_certificate_reloads_total", "Certificate reloads on SIGHUP, by result.", labels: [("result", "failed")]))
        let expiry = self.certificateExpiry
        metrics.computedGauge("ferry_tls_certificate_expiry_timestamp_seconds", "notAfter of the certificate that expires first (Unix time).") {
            let v = expiry.value.load(ordering: .relaxed)
            return v > 0 ? [(labels: "", value: Double(v))] : []
        }
    }

    // MARK: Signals: reload and drain

    private func handleSignal(_ signal: Int32) {
        switch signal {
        case SIGHUP: reload(origin: "SIGHUP")
        case SIGTERM, SIGINT: beginDrain(signal == SIGTERM ? "SIGTERM" : "SIGINT")
        default: break
        }
    }

    /// Re-reads the configuration (SIGHUP, or POST /v1/reload); true when it applied.
    @discardableResult
    func reload(origin: String) -> Bool {
        guard let reloadSource else {
            logger.notice("reload ignored: running on the built-in default config, there is no file to reload", metadata: ["origin": "\(origin)"])
            return false
        }
        var ok = false
        defer {
            let now = wallClockSeconds()
            lastReload = (now, ok, origin)
            state.lastReloadOK.store(ok, ordering: .relaxed)
            if ok { state.configLoadedAt.store(Int64(now), ordering: .relaxed) }
        }
        Systemd.notify("RELOADING=1\nMONOTONIC_USEC=\(Systemd.monotonicMicros())\nSTATUS=reloading")
        let block = metrics.block(engine.loops.count)
        do {
            // Every key is either applied below or named as needing a restart: the plan comes
            // from the key table (FerryConfig.keys), and restart-only keys keep their running
            // values in `next`, so they are named again on every reload until the restart.
            let plan = FerryConfig.reloadPlan(running: config, next: try reloadSource())
            let next = plan.effective
            if !turnServices.isEmpty {
                // Users, shared secrets and the peer policy apply to the next request.
                let credentials = Server.credentials(next.turn, realm: next.turn.realm)
                let policy = Server.policy(next)
                for loop in engine.loops {
                    loop.execute { [self] l in self.turnServices[l.index].server.update(credentials: credentials, policy: policy) }
                }
            }
            let running = config
            config = next
            warnIfRelayPortsAreEphemeral()
            // Certificates are read again even when the paths are the same (renewed in place).
            reloadTLS()
            if config.signal.enabled {
                do {
                    let policy = try makeSignalPolicy()
                    for loop in engine.loops {
                        loop.execute { [self] l in self.signalWorkers.all[l.index].update(policy: policy) }
                    }
                    // The issuer's keys are fetched again off the loop; the keys in use stay until then.
                    startJWKSFetch()
                } catch {
                    config.signal = running.signal
                    logger.error("signaling reload failed; keeping the running signaling settings", metadata: ["error": "\(error)"])
                }
            }
            levelBox.level = Logger.Level(config.log.level)
            do {
                adminToken = try Server.adminToken(config.admin)
            } catch {
                logger.error("admin token reload failed; keeping the token in use", metadata: ["error": "\(error)"])
            }
            ok = true
            if let c = reloadCounters?.ok { block.add(c) }
            var metadata: Logger.Metadata = [:]
            if !plan.applied.isEmpty { metadata["applied"] = "\(plan.applied.joined(separator: ","))" }
            if !plan.needsRestart.isEmpty { metadata["needs_restart"] = "\(plan.needsRestart.joined(separator: ","))" }
            logger.notice("configuration reloaded", metadata: metadata)
        } catch let errors as ConfigErrors {
            if let c = reloadCounters?.failed { block.add(c) }
            // One line per problem, as `ferry config check` prints them.
            logger.error("reload failed; keeping the running configuration", metadata: ["problems": "\(errors.issues.count)"])
            for issue in errors.issues {
                logger.error("config problem", metadata: ["key": "\(issue.key)", "problem": "\(issue.message)"])
            }
        } catch {
            if let c = reloadCounters?.failed { block.add(c) }
            logger.error("reload failed; keeping the running configuration", metadata: ["error": "\(error)"])
        }
        Systemd.notify("READY=1\nSTATUS=serving")
        return ok
    }

    func beginDrain(_ why: String) {
        if state.draining.load(ordering: .relaxed) {
            logger.notice("second stop signal: stopping now")
            control.stop()
            return
        }
        state.draining.store(true, ordering: .relaxed)
        Systemd.notify("STOPPING=1\nSTATUS=draining")
        drainDeadline = control.now + UInt64(config.server.drainSeconds) * 1_000_000_000
        logger.notice("draining", metadata: ["signal": "\(why)", "drain_seconds": "\(config.server.drainSeconds)"])
        if !signalWorkers.all.isEmpty {
            for loop in engine.loops {
                loop.execute { [self] l in self.signalWorkers.all[l.index].drain() }
            }
        }
        checkDrain()
    }

    /// Stops once no session is left or the drain time is over, checking every 100 ms.
    private func checkDrain() {
        let active = activeSessions()
        if active == 0 || control.now >= drainDeadline {
            if active > 0 { logger.warning("drain time over; closing remaining sessions", metadata: ["sessions": "\(active)"]) }
            control.stop()
            return
        }
        control.schedule(after: 100_000_000) { [unowned self] in self.checkDrain() }
    }

    /// Sessions that a drain waits for: TURN allocations (the forwarding service keeps none).
    func activeSessions() -> Int {
        guard let c = turnCounters else { return 0 }
        return Int(metrics.total(c.allocationsActive))
    }

    // MARK: Watchdog

    /// Sends WATCHDOG=1 at half the interval systemd asks for, but only while every worker
    /// answers pings: a wedged worker makes systemd restart the service.
    private func startWatchdog() {
        guard let usec = Systemd.watchdogMicros() else { return }
        let interval = usec * 1000 / 2
        logger.info("systemd watchdog enabled", metadata: ["interval_ms": "\(usec / 1000)"])
        func tick() {
            let now = control.now
            let stale = heartbeats.beats.withLock { beats in beats.contains { now > $0 && now - $0 > usec * 1000 } }
            if stale {
                logger.error("a worker missed its watchdog ping; withholding WATCHDOG=1")
            } else {
                Systemd.notify("WATCHDOG=1")
            }
            for loop in engine.loops {
                let i = loop.index
                loop.execute { [heartbeats] l in heartbeats.beats.withLock { $0[i] = l.now } }
            }
            control.schedule(after: interval) { tick() }
        }
        tick()
    }
}

extension Logger.Level {
    public init(_ level: FerryConfig.LogLevel) {
        switch level {
        case .trace: self = .trace
        case .debug: self = .debug
        case .info: self = .info
        case .notice: self = .notice
        case .warning: self = .warning
        case .error: self = .error
        case .critical: self = .critical
        }
    }
}
