import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import FerryTLS
import FerryWire
#if canImport(Glibc)
import Glibc
#endif

/// `ferry bench ws://…/v1/signal [ws://… …]`: a signaling load generator on Ferry's own event
/// loop, one thread, so it costs the machine a few microseconds per message rather than the tens
/// a Python client took (docs/benchmarks.md). PEERS peers connect (spread over the URLs in turn:
/// peer i to URL i mod K) and authenticate with tokens minted from the shared secret; then SENDERS
/// of them each send offers to the next peer (i + 1, so at another instance when K > 1) at RATE
/// messages/s in all, paced every millisecond. Each payload carries its send time; the receiver
/// records the latency (one process, one clock). Plain `ws://` only: the generator measures
/// routing (syscalls, wakeups, parsing), not TLS.
public struct SignalBenchOptions: Sendable {
    public var urls: [ServerURL]
    public var tokenSecret: String
    public var network = "bench"
    public var peers = 1000
    public var senders = 100
    public var rate = 10_000
    public var duration = 5.0
    /// Local addresses to connect from, in turn (127.0.0.1…127.0.0.N): one source address has
    /// about 28,000 ephemeral ports per server port.
    public var sourceAddresses = 1

    public init(urls: [ServerURL], tokenSecret: String) {
        self.urls = urls
        self.tokenSecret = tokenSecret
    }
}

public struct SignalBenchResult: Sendable {
    public var peers = 0
    public var connectSeconds = 0.0
    public var seconds = 0.0
    public var sent: UInt64 = 0
    public var delivered: UInt64 = 0
    public var errors: [String: Int] = [:]
    public var p50: UInt64 = 0, p99: UInt64 = 0, p999: UInt64 = 0, max: UInt64 = 0

    public var json: JSONValue {
        .object([("peers", .number(Double(peers))), ("connect_seconds", .number((connectSeconds * 100).rounded() / 100)),
                 ("seconds", .number(seconds)), ("sent", .number(Double(sent))), ("delivered", .number(Double(delivered))),
                 ("delivered_per_second", .number(seconds > 0 ? (Double(delivered) / seconds).rounded() : 0)),
                 ("errors", .object(errors.sorted { $0.key < $1.key }.map { ($0.key, .number(Double($0.value))) })),
                 ("latency_us", .object([("p50", .number(Double(p50) / 1000)), ("p99", .number(Double(p99) / 1000)),
                                         ("p99.9", .number(Double(p999) / 1000)), ("max", .number(Double(max) / 1000))]))])
    }

    public var human: String {
        func ms(_ n: UInt64) -> String { "\((Double(n) / 10_000).rounded() / 100) ms" }
        let errs = errors.isEmpty ? "none" : errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        return """
            \(peers) peers authenticated in \((connectSeconds * 10).rounded() / 10) s; \(Int(seconds.rounded())) s of routing: sent \(sent), delivered \(delivered) (\(Int((Double(delivered) / Swift.max(seconds, 0.001)).rounded())) msg/s); errors: \(errs)
            latency, send to receipt: p50 \(ms(p50)), p99 \(ms(p99)), p99.9 \(ms(p999)), max \(ms(max))
            """
    }
}

public final class SignalBench: @unchecked Sendable {
    final class Peer: EventHandler {
        let index: Int
        var fd: FileDescriptor
        var client: SignalClient
        var registration: Registration?
        var out: [UInt8] = []
        var ready = false
        weak var bench: SignalBench?

        init(index: Int, fd: FileDescriptor, client: SignalClient) {
            self.index = index
            self.fd = fd
            self.client = client
        }

        func handleEvent(_ events: UInt32, loop: EventLoop) {
            guard let bench else { return }
            if events & Epoll.output != 0 { bench.flush(self) }
            if events & (Epoll.input | Epoll.hangup | Epoll.error) != 0 { bench.read(self) }
        }
    }

    public let options: SignalBenchOptions
    let loop: EventLoop
    var peers: [Peer] = []
    var keys: [String] = []
    var connected = 0, failed = 0
    var histogram = LatencyHistogram()
    var result = SignalBenchResult()
    var buffer = [UInt8](repeating: 0, count: 65536)
    var startedAt: UInt64 = 0
    var waiting: [SignalClient] = []
    var opened = 0
    var addresses: [SocketAddress] = []
    static let inFlight = 256
    var announce: (String) -> Void = { _ in }
    var measuring = false
    static let payloadMarker = Array("\"payload\":\"".utf8)

    public init(options: SignalBenchOptions) throws(SystemError) {
        self.options = options
        loop = try EventLoop(index: 0, name: "ferry-bench")
    }

    /// Connects and authenticates every peer, routes for the duration, and reports.
    public func run(progress: @escaping (String) -> Void) throws(SystemError) -> SignalBenchResult {
        let addresses = try options.urls.map { u throws(SystemError) -> SocketAddress in
            guard let a = try? Resolver.resolve(u.host, port: u.port).first else { throw SystemError(call: "resolve \(u.host)", errno: ENOENT) }
            return a
        }
        startedAt = monotonicNanos()
        announce = progress
        for i in 0..<options.peers {
            let (priv, pub) = X25519.keyPair()
            let token = SignalToken.mint(secret: options.tokenSecret, network: options.network, peer: Base64.std(pub),
                                         expiry: wallClockSeconds() + 86400)
            let url = options.urls[i % addresses.count]
            guard let client = SignalClient(privateKey: priv, token: token, host: url.host, path: url.path) else { continue }
            keys.append(client.publicKey)
            waiting.append(client)
        }
        self.addresses = addresses
        // At most `inFlight` handshakes at a time: thousands of connects at once overflow the
        // server's accept queue, and SYN retries (1 s, 3 s, …) then time the late ones out.
        for _ in 0..<min(SignalBench.inFlight, waiting.count) { try openNext() }
        // Authenticate: the loop runs until every peer is welcomed or has failed.
        var lastReport = startedAt
        // Weak: the loop is this object's, and a hook holding it strongly would be a cycle that
        // outlives the run (LeakSanitizer reports it at exit).
        loop.onSweep { [weak self] now in
            guard let self, !measuring, now - lastReport >= 1_000_000_000 else { return }
            lastReport = now
            progress("\(connected) of \(options.peers) peers authenticated")
        }
        loop.onIterationEnd { [weak self] in
            guard let self, !measuring, connected + failed >= options.peers else { return }
            startRouting()
        }
        loop.run()
        for p in peers { _ = p.fd.close() }
        return result
    }

    /// Connects the next waiting peer (its index is its place in `keys`).
    func openNext() throws(SystemError) {
        guard opened < waiting.count else { return }
        let i = opened
        opened += 1
        let source = SocketAddress(ip: IPAddress(ipv4: 0x7F00_0001 + UInt32(i % max(1, options.sourceAddresses))), port: 0)
        let fd = try open(addresses[i % addresses.count], from: source)
        let p = Peer(index: i, fd: fd, client: waiting[i])
        p.bench = self
        p.out = p.client.start()
        p.registration = try loop.register(fd: fd.raw, events: Epoll.input | Epoll.output, handler: p)
        peers.append(p)
    }

    private func open(_ server: SocketAddress, from source: SocketAddress) throws(SystemError) -> FileDescriptor {
        let fd = FileDescriptor(try syscallValue("socket") {
            socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        })
        if options.sourceAddresses > 1 { try Sockets.bind(fd.raw, source) }
        let rc = server.withSockAddr { sa, len in Glibc.connect(fd.raw, sa, len) }
        if rc != 0 && errno != EINPROGRESS {
            let e = errno
            _ = fd.close()
            throw SystemError(call: "connect(\(server))", errno: e)
        }
        Sockets.setNoDelay(fd.raw)
        return fd
    }

    private func startRouting() {
        measuring = true
        result.peers = connected
        result.connectSeconds = Double(monotonicNanos() - startedAt) / 1e9
        let routingStart = monotonicNanos()
        let senders = Array(peers.prefix(min(options.senders, peers.count)).filter(\.ready))
        var next = 0
        let end = routingStart + UInt64(options.duration * 1e9)
        var timer: IntervalTimer?
        // Every millisecond: the loop's own timers tick every 10 ms, which would send in bursts
        // and measure the bursts' queueing rather than the server.
        timer = try? IntervalTimer(loop: loop, intervalNanos: 1_000_000) { [self] in
            let now = monotonicNanos()
            guard now < end else {
                // One more second for what is in flight, then the report.
                timer?.cancel(on: loop)
                timer = nil
                result.seconds = options.duration
                _ = loop.schedule(after: 1_000_000_000) { [self] in finish() }
                return
            }
            // What the rate owes by now (the pace is kept by the clock, whatever the timer does).
            let due = UInt64(Double(now - routingStart) / 1e9 * Double(options.rate))
            while result.sent < due && !senders.isEmpty {
                let p = senders[next % senders.count]
                next &+= 1
                let to = keys[(p.index + 1) % keys.count]
                p.out += p.client.route("offer", to: to, payload: String(monotonicNanos()))
                result.sent += 1
                flush(p)
            }
        }
        if timer == nil { return finish() }
        announce("routing")
    }

    private func finish() {
        result.delivered = histogram.total
        result.p50 = histogram.percentile(0.5)
        result.p99 = histogram.percentile(0.99)
        result.p999 = histogram.percentile(0.999)
        result.max = histogram.percentile(1)
        loop.stop()
    }

    func flush(_ p: Peer) {
        while !p.out.isEmpty {
            let r = p.out.withUnsafeBytes { b in try? Sockets.write(p.fd.raw, from: b) }
            guard case .done(let n)? = r, n > 0 else { break }
            p.out.removeFirst(n)
        }
        if let reg = p.registration {
            try? loop.modify(fd: p.fd.raw, reg, events: p.out.isEmpty ? Epoll.input : Epoll.input | Epoll.output)
        }
    }

    func read(_ p: Peer) {
        while true {
            let r = buffer.withUnsafeMutableBytes { b in try? Sockets.read(p.fd.raw, into: b) }
            guard case .done(let n)? = r else {
                if r == nil { fail(p) }
                return
            }
            if n == 0 { return fail(p) }
            let (events, reply) = p.client.receive(buffer[0..<n])
            if !reply.isEmpty {
                p.out += reply
                flush(p)
            }
            for e in events { handle(e, p) }
        }
    }

    private func handle(_ e: SignalClient.Event, _ p: Peer) {
        switch e {
        case .welcome:
            p.ready = true
            connected += 1
            if (try? openNext()) == nil { failed += 1 }
        case .message(_, _, let payload, _):
            guard measuring, let payload, let sent = UInt64(payload) else { return }
            histogram.record(monotonicNanos() &- sent)
        case .error(let code, _):
            result.errors[code, default: 0] += 1
        case .ended(let ending):
            result.errors["ended: \(ending)", default: 0] += 1
            fail(p)
        default:
            break
        }
    }

    private func fail(_ p: Peer) {
        guard let reg = p.registration else { return }
        loop.deregister(fd: p.fd.raw, reg)
        p.registration = nil
        if p.ready { connected -= 1 } else {
            failed += 1
            if (try? openNext()) == nil { failed += 1 }
        }
        p.ready = false
    }
}
