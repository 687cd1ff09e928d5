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
import FerryXDP
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
    let levelBox: LogLevelBox
    /// Control-thread state (the main thread's loop): ready/draining, admin, timers.
    let control: EventLoop
    let engine: Engine
    let metrics: MetricsRegistry
    var admin: AdminServer?
    /// The `PortLock`s of the listening ports: open until the process exits.
    var portLocks: [FileDescriptor] = []
    var signals: SignalSource?
    /// One per event loop: sockets, connections and the services registered on them.
    var workers: [Worker] = []
    /// One per worker when any listener serves TURN.
    var turnServices: [TURNService] = []
    lazy var sessionLog = SessionLog(enabled: config.log.sessions)
    var turnCounters: TURNCounters?
    /// The native relay, on the worker that serves its port (nil without a relay listener).
    var relay: RelayService?
    /// The XDP fast path, when engine.xdp is on and the kernel took it (Server+XDP).
    var xdp: XDPProgram?
    /// The TLS contexts in use (control thread); workers get their own reference on reload.
    var tlsContexts: TLSContextSet?
    let certificateExpiry = UnixSecondsBox()
    /// A Unix time written on the control thread and read by scrape-time gauges.
    final class UnixSecondsBox: Sendable {
        let value = Atomic<Int64>(0)
    }
    var certificateReloads: (ok: CounterID, failed: CounterID)?
    let signalWorkers = SignalWorkers()
    /// `[signal.nats]` configured: the directory spanning instances.
    var natsDirectory: NATSDirectory?
    var signalKey: SignalServerKey?
    var boundAddresses: [String: SocketAddress] = [:]
    let state = ServerState()
    var drainDeadline: UInt64 = 0
    /// Per worker: the monotonic time the worker last answered a watchdog ping.
    let heartbeats: Heartbeats
    var reloadCounters: (ok: CounterID, failed: CounterID)?
    /// The JWKS last fetched from `signal.jwks_url` (control thread). Fetches run on a thread of
    /// their own and post their result back to the control loop; only the newest counts.
    var jwks: (url: String, data: [UInt8])?
    /// The JWKS the running signaling policy verifies with (from a file or a fetch).
    var jwksInUse: [UInt8]?
    var jwksGeneration = 0
    var jwksRetry: TimerID?
    var jwksCounters: (ok: CounterID, failed: CounterID)?
    let jwksFetchedAt = UnixSecondsBox()
    /// The admin API's (AdminAPI.swift): the bearer token, refusals counted, the last reload,
    /// and the status page's history (control thread).
    var adminToken: [UInt8]?
    var adminUnauthorized: CounterID?
    var lastReload: (at: UInt64, ok: Bool, origin: String)?
    /// The open status view, rendered at most once a second (AdminAPI.statusAnswer).
    var statusCache: (at: UInt64, json: [UInt8], page: [UInt8])?
    /// A drain asked for through the admin API (set at once; the drain starts 50 ms later).
    var drainRequested = false
    var history = StatusHistory()
    /// After a failed fetch, the next try.
    static let jwksRetrySeconds: UInt64 = 30

    /// Readiness, shared with the scrape-time gauges.
    final class ServerState: Sendable {
        let ready = Atomic<Bool>(false)
        let draining = Atomic<Bool>(false)
        let lastReloadOK = Atomic<Bool>(true)
        let configLoadedAt = Atomic<Int64>(0)
        /// Signaling across instances, when configured: /readyz says when it is down.
        let nats = Mutex<NATSLink?>(nil)
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
        natsDirectory?.start()
        state.ready.store(true, ordering: .relaxed)
        let summary = "serving \(config.listeners.count) listener(s) on \(engine.loops.count) worker(s)"
        logger.info("ferryd ready", metadata: ["workers": "\(engine.loops.count)", "version": "\(FerryVersion.string)"])
        Systemd.notify("READY=1\nSTATUS=\(summary)")
        startWatchdog()
        startStatusHistory()
        control.run()
        engine.stopAndJoin()
        // Detached before ferryd exits, so nothing forwards for the sessions that end with it.
        xdp?.close()
        // What the drain published (peers going offline) reaches NATS before the process ends.
        natsDirectory?.link.closeAndWait(timeoutMillis: 1000)
        for w in workers { w.close() }
        admin?.close()
        logger.info("ferryd stopped")
        return 0
    }

    func setUp() throws {
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
                                             gro: config.engine.gro && listener.service != .turn)
            // The native relay's sessions live on one worker (RelayService says why).
            let sockets = try registry.udpSockets(listener, workers: listener.service == .relay ? 1 : engine.loops.count, options: options)
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
                case .relay:
                    try workers[worker].addDatagramSocket(fd: fd, counters: counters, services: [(relayService(worker), RelayService.datagramRanges)],
                                                          gro: config.engine.gro)
                }
            }
            logger.info("listening", metadata: ["listener": "\(listener.name)", "service": "\(listener.service.rawValue)",
                                                "address": "\(boundAddresses[listener.name].map { "\($0)" } ?? "-")",
                                                "sockets": "\(sockets.count)"])
        }
        setUpXDP()
        adminToken = try Server.adminToken(config.admin) { [logger] in logger.warning("\($0)") }
        adminUnauthorized = metrics.counter("ferry_admin_unauthorized_total",
                                            "Admin API requests refused for a missing or wrong bearer token (or with no admin.token set).")
        if let fd = try registry.adminSocket(config.admin.address) {
            let block = metrics.block(engine.loops.count)
            let counters = AdminServer.Counters(registering: metrics)
            admin = try AdminServer(fd: fd, loop: control, metrics: block, maxConnections: config.admin.maxConnections,
                                    maxPerSource: config.admin.maxConnectionsPerSource,
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
    func setUpStreams() throws {
        let workers = engine.loops.count
        let streamCounters = StreamCounters(registering: metrics)
        registerCertificateMetrics()
        // A plain TCP listener works without certificates (TLS sniffed there is then refused).
        if config.listeners.contains(where: { $0.transport != .udp }) && (!config.tls.certificates.isEmpty || config.tls.selfSigned) {
            tlsContexts = try loadTLS(initial: true)
            certificateExpiry.value.store(tlsContexts!.earliestExpiry, ordering: .relaxed)
        }
        let state = self.state
        let httpsRoute: HTTPSession.Route = { head in Server.healthRoute(head, state: state) }
        // One instance id per process: the entries this ferryd registers carry it (docs/signaling.md).
        let s = config.signal
        let subscriptionLimits = SubscriptionLimits(perPeer: s.maxSubscriptionsPerPeer, perNetwork: s.maxSubscriptionsPerNetwork,
                                                    total: s.maxSubscriptions)
        let local = SignalHub(instance: s.nats.instance.isEmpty ? Crypto.hex(Crypto.randomBytes(8)) : s.nats.instance,
                              limits: subscriptionLimits, registrationsPerSecond: Double(s.registrationsPerSecond),
                              registrationBurst: Double(s.registrationBurst))
        let hub: any SignalDirectory = try s.enabled && !s.nats.servers.isEmpty ? makeNATSDirectory(local) : local
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
        // The native relay's stream side, where TURN is framed on streams (RelayStreamSide).
        let relayStreams = config.listeners.contains(where: { $0.service == .relay }) && !turnServices.isEmpty
            ? RelayStreamHub(loops: engine.loops, relayWorker: 0, budget: config.relay.streamHandoffBytes) : nil
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
            if let relayStreams {
                let side = RelayStreamSide(worker: worker, hub: relayStreams, counters: relayService(0).counters)
                relayStreams.sides.append(side)
                streamSettings.relay = side
            }
            if let signalPolicy, let signalCounters {
                let sw = SignalWorker(index: loop.index, loop: loop, hub: hub, policy: signalPolicy, counters: signalCounters,
                                      metrics: metrics.block(loop.index), queueLimit: config.signal.queueMessages,
                                      authTimeoutSeconds: config.signal.authTimeoutSeconds, registry: signalWorkers, loops: engine.loops,
                                      sessionLog: sessionLog, subscriptionLimits: subscriptionLimits,
                                      queueBytes: config.signal.queueBytes,
                                      queueBytesTotal: max(1 << 16, config.signal.queueBytesTotal / engine.loops.count),
                                      registrationsPerSecond: Double(config.signal.registrationsPerSecond),
                                      registrationBurst: Double(config.signal.registrationBurst))
                signalWorkers.all.append(sw)
                streamSettings.signal = sw
                streamSettings.allowPlaintextSignal = config.signal.allowPlaintext
                streamSettings.maxWebSocketMessage = config.signal.maxMessage
            }
            worker.configureStreams(streamSettings)
        }
        if let relayStreams {
            relayStreams.relay = relayService(0)
            relayService(0).attach(hub: relayStreams)
        }
    }

    // MARK: Metrics

    func registerGlobalMetrics() {
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
            // Out of descriptors within the last 5 s: new clients would not be accepted here.
            if DescriptorLimit.recentlyHit(now: monotonicNanos()) { return HTTPAnswer(status: 503, body: "at the open-file limit\n") }
            // Still ready: this instance serves its own peers and relays without NATS, and when
            // NATS is down every instance is; the body says what is degraded (docs/operations.md).
            if let link = state.nats.withLock({ $0 }), !link.isConnected.load(ordering: .relaxed) {
                return HTTPAnswer(status: 200, body: "ready, degraded: NATS unreachable, signaling reaches only this instance's peers\n")
            }
            return HTTPAnswer(status: 200, body: "ready\n")
        default:
            return HTTPAnswer(status: 404, body: "not found\n")
        }
    }

    // MARK: Watchdog

    /// Sends WATCHDOG=1 at half the interval systemd asks for, but only while every worker
    /// answers pings: a wedged worker makes systemd restart the service.
    func startWatchdog() {
        guard let usec = Systemd.watchdogMicros() else { return }
        let interval = usec * 1000 / 2
        logger.info("systemd watchdog enabled", metadata: ["interval_ms": "\(usec / 1000)"])
        // Each tick pings every worker and, on the next, checks that each answered the ping it
        // was sent. The tick itself runs on the control thread: when it comes late, the control
        // thread was late (an admin flood, a slow reload), and the log says so rather than
        // blaming a worker whose ping was simply sent late.
        var lastTick = control.now, pingSent = control.now
        func tick() {
            let now = control.now
            let late = now - lastTick > usec * 1000
            let stale = heartbeats.beats.withLock { beats in beats.indices.filter { beats[$0] < pingSent && now - pingSent > usec * 1000 } }
            if late {
                logger.error("the control thread was late for the watchdog; withholding WATCHDOG=1",
                             metadata: ["late_ms": "\((now - lastTick) / 1_000_000)", "watchdog_ms": "\(usec / 1000)"])
            } else if !stale.isEmpty {
                logger.error("a worker missed its watchdog ping; withholding WATCHDOG=1",
                             metadata: ["workers": "\(stale.map(String.init).joined(separator: ","))"])
            } else {
                Systemd.notify("WATCHDOG=1")
            }
            lastTick = now
            pingSent = now
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
