#if canImport(Glibc)
import Glibc
#endif
import FerrySystem
import FerryConfig
import FerryWire
import Logging
import Synchronization

/// The composition of one `ferryd`: the engine and its listeners, the admin endpoint, systemd
/// readiness and watchdog, reload and graceful drain. Runs its control loop on the calling
/// thread; workers run on their own threads.
public final class Server {
    /// Re-reads the configuration for a reload (file, environment and flags applied).
    public typealias ConfigSource = () throws -> FerryConfig

    private var config: FerryConfig
    private let reloadSource: ConfigSource?
    private let logger: Logger
    private let levelBox: LogLevelBox
    /// Control-thread state (the main thread's loop): ready/draining, admin, timers.
    private let control: EventLoop
    private let engine: Engine
    private let metrics: MetricsRegistry
    private var admin: AdminServer?
    private var signals: SignalSource?
    private var forwarders: [(loop: EventLoop, handler: UDPForwarder)] = []
    private var boundAddresses: [String: SocketAddress] = [:]
    private let state = ServerState()
    private var drainDeadline: UInt64 = 0
    /// Per worker: the monotonic time the worker last answered a watchdog ping.
    private let heartbeats: Heartbeats
    private var reloadCounters: (ok: CounterID, failed: CounterID)?

    /// Readiness, shared with the scrape-time gauges.
    final class ServerState: Sendable {
        let ready = Atomic<Bool>(false)
        let draining = Atomic<Bool>(false)
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

    /// Addresses the listeners are bound to (first worker's socket), by listener name; "admin" too.
    public var addresses: [String: SocketAddress] { boundAddresses }

    /// Binds everything, starts the workers, announces readiness, and serves until SIGTERM or
    /// SIGINT and the drain are over. Returns the process exit code.
    public func run() throws -> Int32 {
        SignalSource.blockProcessSignals()
        try setUp()
        try engine.start()
        state.ready.store(true, ordering: .relaxed)
        let summary = "serving \(config.listeners.count) listener(s) on \(engine.loops.count) worker(s)"
        logger.info("ferryd ready", metadata: ["workers": "\(engine.loops.count)", "version": "\(FerryVersion.string)"])
        Systemd.notify("READY=1\nSTATUS=\(summary)")
        startWatchdog()
        control.run()
        engine.stopAndJoin()
        for f in forwarders { f.handler.close(loop: f.loop) }
        admin?.close()
        logger.info("ferryd stopped")
        return 0
    }

    private func setUp() throws {
        var registry = ListenerRegistry(passed: Systemd.takeListenedSockets(), logger: logger)
        if registry.activated { logger.info("socket activation", metadata: ["names": "\(registry.passed.keys.sorted())"]) }
        registerGlobalMetrics()
        let options = Sockets.UDPOptions(reusePort: true, receiveBuffer: config.engine.udpReceiveBuffer,
                                         sendBuffer: config.engine.udpSendBuffer, gro: config.engine.gro)
        for listener in config.listeners {
            let sockets = try registry.udpSockets(listener, workers: engine.loops.count, options: options)
            if let first = sockets.first { boundAddresses[listener.name] = try Sockets.localAddress(first.fd.raw) }
            for (worker, fd) in sockets {
                let loop = engine.loops[worker]
                switch listener.service {
                case .forward:
                    let counters = udpCounters(listener.name)
                    let local = try Sockets.localAddress(fd.raw)
                    let f = try UDPForwarder(fd: fd, target: listener.forwardTo!, batchSize: config.engine.batchSize,
                                             maxDatagram: config.engine.maxDatagram, gro: config.engine.gro,
                                             ipv6Socket: !local.ip.isIPv4, loop: loop,
                                             metrics: metrics.block(worker), counters: counters)
                    forwarders.append((loop, f))
                }
            }
            logger.info("listening", metadata: ["listener": "\(listener.name)", "service": "\(listener.service.rawValue)",
                                                "address": "\(boundAddresses[listener.name].map { "\($0)" } ?? "-")",
                                                "sockets": "\(sockets.count)"])
        }
        if let fd = try registry.adminSocket(config.admin.address) {
            let block = metrics.block(engine.loops.count)
            let requestFamily = "ferry_admin_requests_total"
            var byStatus: [Int: CounterID] = [:]
            for code in [200, 400, 404, 405, 408, 431, 503, 505] {
                byStatus[code] = metrics.counter(requestFamily, "Admin HTTP requests answered, by status code.", labels: [("code", "\(code)")])
            }
            let other = metrics.counter(requestFamily, "Admin HTTP requests answered, by status code.", labels: [("code", "other")])
            let counters = AdminServer.Counters(
                requests: { byStatus[$0] ?? other },
                rejected: metrics.counter("ferry_admin_malformed_requests_total", "Admin requests rejected as malformed or oversized (answered 400/408/431/505 and closed)."),
                refusedConnections: metrics.counter("ferry_admin_refused_connections_total", "Admin connections closed at once because admin.max_connections were open."))
            admin = try AdminServer(fd: fd, loop: control, logger: logger, maxConnections: config.admin.maxConnections,
                                    timeoutSeconds: config.admin.requestTimeoutSeconds, metrics: block, counters: counters,
                                    route: { [unowned self] head in self.route(head) })
            if let a = admin?.address {
                boundAddresses["admin"] = a
                logger.info("admin endpoint", metadata: ["address": "\(a)"])
            }
        }
        registry.closeUnclaimed()
        signals = try SignalSource(loop: control) { [unowned self] signal in self.handleSignal(signal) }
    }

    // MARK: Metrics

    private func udpCounters(_ listener: String) -> UDPForwarder.Counters {
        let l = ("listener", listener)
        func drop(_ reason: String) -> CounterID {
            metrics.counter("ferry_udp_drops_total", "Datagrams dropped by the engine, by listener and reason.", labels: [l, ("reason", reason)])
        }
        return UDPForwarder.Counters(
            received: metrics.counter("ferry_udp_datagrams_received_total", "Datagrams (or GRO trains) read from a listener socket.", labels: [l]),
            sent: metrics.counter("ferry_udp_datagrams_sent_total", "Datagrams (or GSO trains) written to a listener socket.", labels: [l]),
            bytes: metrics.counter("ferry_udp_bytes_received_total", "Bytes read from a listener socket.", labels: [l]),
            truncated: drop("truncated"),
            bufferFull: drop("buffer_full"),
            sendError: drop("send_error"),
            batches: metrics.histogram("ferry_udp_batch_size", "Datagrams returned per recvmmsg call.", bounds: [1, 2, 4, 8, 16, 32, 64, 128, 256], labels: [l]))
    }

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
        reloadCounters = (metrics.counter("ferry_reloads_total", "Configuration reloads (SIGHUP), by result.", labels: [("result", "ok")]),
                          metrics.counter("ferry_reloads_total", "Configuration reloads (SIGHUP), by result.", labels: [("result", "failed")]))
    }

    // MARK: Admin routes

    private func route(_ head: HTTPRequestHead) -> HTTPAnswer {
        switch head.path {
        case "/metrics":
            return HTTPAnswer(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: metrics.render())
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

    // MARK: Signals: reload and drain

    private func handleSignal(_ signal: Int32) {
        switch signal {
        case SIGHUP: reload()
        case SIGTERM, SIGINT: beginDrain(signal == SIGTERM ? "SIGTERM" : "SIGINT")
        default: break
        }
    }

    private func reload() {
        guard let reloadSource else {
            logger.notice("SIGHUP ignored: running on the built-in default config, there is no file to reload")
            return
        }
        Systemd.notify("RELOADING=1\nMONOTONIC_USEC=\(Systemd.monotonicMicros())\nSTATUS=reloading")
        let block = metrics.block(engine.loops.count)
        do {
            let next = try reloadSource()
            var restartOnly: [String] = []
            if next.listeners != config.listeners { restartOnly.append("listener") }
            if next.engine != config.engine { restartOnly.append("engine") }
            if next.admin != config.admin { restartOnly.append("admin") }
            if next.server.workers != config.server.workers || next.server.pinWorkers != config.server.pinWorkers {
                restartOnly.append("server.workers/pin_workers")
            }
            if next.log.format != config.log.format { restartOnly.append("log.format") }
            levelBox.level = Logger.Level(next.log.level)
            config.log.level = next.log.level
            config.server.drainSeconds = next.server.drainSeconds
            if let c = reloadCounters?.ok { block.add(c) }
            logger.notice("configuration reloaded", metadata: restartOnly.isEmpty ? [:] :
                ["needs_restart": "\(restartOnly.joined(separator: ","))"])
        } catch {
            if let c = reloadCounters?.failed { block.add(c) }
            logger.error("reload failed; keeping the running configuration", metadata: ["error": "\(error)"])
        }
        Systemd.notify("READY=1\nSTATUS=serving")
    }

    private func beginDrain(_ why: String) {
        if state.draining.load(ordering: .relaxed) {
            logger.notice("second stop signal: stopping now")
            control.stop()
            return
        }
        state.draining.store(true, ordering: .relaxed)
        Systemd.notify("STOPPING=1\nSTATUS=draining")
        drainDeadline = control.now + UInt64(config.server.drainSeconds) * 1_000_000_000
        logger.notice("draining", metadata: ["signal": "\(why)", "drain_seconds": "\(config.server.drainSeconds)"])
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

    /// Sessions that a drain waits for. The plain forwarding service keeps none.
    private func activeSessions() -> Int { 0 }

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
