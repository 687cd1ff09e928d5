import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import FerryWire
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// `ferry bench`: a TURN load generator that measures any TURN server the same way (docs/cli.md).
/// ALLOCATIONS client sockets each allocate with the standard requests (401, then long-term or
/// REST credentials), are paired, and bind a channel to their partner's relayed address; then
/// every socket sends SIZE-byte ChannelData to its partner through the relay at RATE packets/s in
/// all (sendmmsg batches, paced every millisecond), and a receiver thread takes what arrives
/// (recvmmsg) and reads the sequence number and send time in each payload: relayed packets/s,
/// loss, and the one-way latency through the relay (both ends are this process's clock).
/// Against a native relay (`wgrelay:`, Bench+Native.swift) the sockets bind sessions in pairs
/// instead, and the packets are WireGuard transport-data messages.
public struct BenchOptions: Sendable {
    public var server: ServerURL
    public var credentials: TURNClient.Credentials
    /// Native relay: the shared secret credentials are minted with, and their network.
    public var nativeSecret: String?
    public var network = "bench"
    public var allocations = 16
    public var rate = 10_000
    public var size = 200
    public var duration = 5.0
    public init(server: ServerURL, credentials: TURNClient.Credentials) {
        self.server = server
        self.credentials = credentials
    }
}

/// Latency in nanoseconds into log-linear buckets (16 per power of two: within 6.25 %), so
/// recording a packet is an index computation and an increment.
struct LatencyHistogram {
    var counts = [UInt64](repeating: 0, count: 64 * 16)
    var total: UInt64 = 0

    @inline(__always) static func bucket(_ v: UInt64) -> Int {
        if v < 16 { return Int(v) }
        let p = 63 - v.leadingZeroBitCount  // ≥ 4
        return (p - 3) * 16 + Int((v >> UInt64(p - 4)) & 15)
    }

    static func lowerBound(_ b: Int) -> UInt64 {
        if b < 16 { return UInt64(b) }
        let p = b / 16 + 3, sub = UInt64(b % 16)
        return (16 + sub) << UInt64(p - 4)
    }

    @inline(__always) mutating func record(_ v: UInt64) {
        counts[Self.bucket(v)] &+= 1
        total &+= 1
    }

    func percentile(_ q: Double) -> UInt64 {
        guard total > 0 else { return 0 }
        let want = UInt64((Double(total) * q).rounded(.up))
        var seen: UInt64 = 0
        for (b, c) in counts.enumerated() {
            seen += c
            if seen >= max(1, want) { return Self.lowerBound(b) }
        }
        return 0
    }

    mutating func merge(_ o: LatencyHistogram) {
        for i in counts.indices { counts[i] += o.counts[i] }
        total += o.total
    }
}

public struct BenchResult: Sendable {
    public var allocations = 0
    /// Native relay: the sockets bound sessions in pairs (no allocations).
    public var native = false
    public var seconds = 0.0
    public var sent: UInt64 = 0
    public var received: UInt64 = 0
    public var p50: UInt64 = 0, p99: UInt64 = 0, p999: UInt64 = 0, max: UInt64 = 0
    public var offeredRate: Double { seconds > 0 ? Double(sent) / seconds : 0 }
    public var relayedRate: Double { seconds > 0 ? Double(received) / seconds : 0 }
    public var loss: Double { sent > 0 ? Double(sent - min(sent, received)) / Double(sent) : 0 }

    public var json: JSONValue {
        let latency: JSONValue = .object([("p50", .number(Double(p50) / 1000)), ("p99", .number(Double(p99) / 1000)),
                                          ("p99.9", .number(Double(p999) / 1000)), ("max", .number(Double(max) / 1000))])
        var members: [(String, JSONValue)] = [(native ? "sessions" : "allocations", .number(Double(native ? allocations / 2 : allocations))),
                                              ("seconds", .number(seconds))]
        members.append(("sent", .number(Double(sent))))
        members.append(("received", .number(Double(received))))
        members.append(("offered_pps", .number(offeredRate.rounded())))
        members.append(("relayed_pps", .number(relayedRate.rounded())))
        members.append(("loss", .number((loss * 1e6).rounded() / 1e6)))
        members.append(("latency_us", latency))
        return .object(members)
    }

    public var human: String {
        func us(_ n: UInt64) -> String { "\((Double(n) / 100).rounded() / 10) µs" }
        return """
            \(native ? "\(allocations / 2) native-relay sessions" : "\(allocations) allocations"), \(Int(seconds.rounded())) s: offered \(Int(offeredRate.rounded())) packets/s, relayed \(Int(relayedRate.rounded())) packets/s, loss \((loss * 10000).rounded() / 100) %
            latency through the relay: p50 \(us(p50)), p99 \(us(p99)), p99.9 \(us(p999)), max \(us(max))
            """
    }
}

public final class Bench: @unchecked Sendable {
    public let options: BenchOptions
    var sockets: [ClientConnection] = []
    var clients: [TURNClient] = []
    var channels: [UInt16] = []
    /// Native relay: each socket's receiver index towards its partner, and the pairs' keys.
    var indices: [UInt32] = []
    var binders: [RelayBinder] = []
    var server = SocketAddress(ip: .ipv4Any, port: 0)
    let received = Atomic<UInt64>(0)
    let receiverDone = Atomic<Bool>(false)
    let histogram = Mutex(LatencyHistogram())
    let maxLatency = Atomic<UInt64>(0)

    public struct Failure: Error, CustomStringConvertible { public let description: String }

    public init(options: BenchOptions) { self.options = options }

    /// Allocates and pairs every socket (blocking; before the clock starts).
    public func setUp() throws(Failure) {
        guard options.server.transport == .udp else { throw Failure(description: "ferry bench measures TURN over UDP (turn:HOST[:PORT])") }
        if options.server.kind == .native { return try setUpNative() }
        try resolveServer()
        var relayed: [SocketAddress] = []
        var mismatches = 0
        while sockets.count < options.allocations {
            let conn: ClientConnection
            do {
                conn = try ClientConnection(to: server, transport: .udp, host: options.server.host, caFile: nil,
                                            timeoutMilliseconds: 5000, socketBuffers: 4 << 20)
            } catch {
                throw Failure(description: "\(error)")
            }
            var c = TURNClient(credentials: options.credentials, reliable: false, software: "ferry-bench")
            do throws(Failure) {
                guard case .allocated(let r, _, _)? = try transact(conn, &c, c.allocate(now: monotonicNanos())) else {
                    throw Failure(description: "allocation \(sockets.count + 1) failed: no answer")
                }
                sockets.append(conn)
                relayed.append(r)
                clients.append(c)
            } catch let e where e.description.hasPrefix("437") && mismatches < 16 {
                // The server still holds an allocation for this 5-tuple (a port an earlier run
                // used and the kernel handed out again): RFC 8656 §7.2, choose another port.
                mismatches += 1
            }
        }
        for i in 0..<options.allocations {
            let partner = relayed[i ^ 1]
            let (number, request) = clients[i].bindChannel(to: partner, now: monotonicNanos())
            guard case .channelBound? = try transact(sockets[i], &clients[i], request) else {
                throw Failure(description: "channel bind \(i) to \(partner) failed (is the peer policy letting relayed addresses reach each other?)")
            }
            channels.append(number)
        }
    }

    func resolveServer() throws(Failure) {
        guard options.allocations >= 2, options.allocations % 2 == 0 else { throw Failure(description: "--allocations must be even and at least 2") }
        guard options.size >= 16, options.size <= 1400 else { throw Failure(description: "--size must be 16 to 1400 bytes") }
        do {
            guard let v4 = try Resolver.resolve(options.server.host, port: options.server.port).first(where: { $0.ip.isIPv4 }) else {
                throw Failure(description: "\(options.server.host): no IPv4 address")
            }
            server = v4
        } catch let e as Failure {
            throw e
        } catch {
            throw Failure(description: "\(error)")
        }
    }

    /// One request to completion: the event, an error response thrown as "CODE reason".
    private func transact(_ conn: ClientConnection, _ c: inout TURNClient, _ first: [UInt8]) throws(Failure) -> TURNClient.Event? {
        let e: TURNClient.Event?
        do {
            e = try conn.exchange(&c, first, timeoutMilliseconds: 5000)
        } catch {
            throw Failure(description: "\(error)")
        }
        if case .failed(_, let code, let reason)? = e { throw Failure(description: "\(code) \(reason)") }
        return e
    }

    /// Sends for the duration, receiving on a second thread; `progress` is called about once a
    /// second with the result so far.
    public func run(progress: (BenchResult) -> Void) throws(Failure) -> BenchResult {
        let loop: EventLoop
        do {
            loop = try EventLoop(index: 0, name: "ferry-bench-rx")
            let box = UncheckedBox(loop)
            try Threads.detach(name: "ferry-bench-rx") { [self] in receive(on: box.value) }
        } catch {
            throw Failure(description: "\(error)")
        }
        let n = sockets.count, size = options.size
        let native = options.server.kind == .native
        // ChannelData's 4-byte header, or WireGuard transport data's 16 (type, receiver, counter).
        let header = native ? 16 : 4
        // One frame per socket, rewritten in place: header, then sequence and send time.
        let frames = UnsafeMutableRawPointer.allocate(byteCount: n * 64 * (size + header), alignment: 64)
        defer { frames.deallocate() }
        let queues = (0..<n).map { _ in UDPSendQueue(capacity: 64) }
        let start = monotonicNanos()
        let end = start + UInt64(options.duration * 1e9)
        var sent: UInt64 = 0
        var nextProgress = start + 1_000_000_000
        var turn = 0
        while true {
            let now = monotonicNanos()
            if now >= end { break }
            let due = UInt64(Double(now - start) * Double(options.rate) / 1e9)
            var budget = due > sent ? due - sent : 0
            while budget > 0 {
                // A batch per socket, round robin, at most 64 at a time.
                let s = turn % n
                turn += 1
                let count = Int(min(budget, 64))
                for k in 0..<count {
                    let frame = frames + (s * 64 + k) * (size + header)
                    if native {
                        frame.storeBytes(of: UInt32(4).littleEndian, toByteOffset: 0, as: UInt32.self)
                        frame.storeBytes(of: indices[s].littleEndian, toByteOffset: 4, as: UInt32.self)
                        frame.storeBytes(of: sent.littleEndian, toByteOffset: 8, as: UInt64.self)
                    } else {
                        ChannelData.writeHeader(channel: channels[s], length: size, at: frame)
                    }
                    (frame + header).storeBytes(of: sent.bigEndian, toByteOffset: 0, as: UInt64.self)
                    (frame + header).storeBytes(of: monotonicNanos().bigEndian, toByteOffset: 8, as: UInt64.self)
                    queues[s].append(frame, size + header, to: server)
                    sent += 1
                }
                queues[s].flush(sockets[s].fdRaw)
                budget -= UInt64(count)
            }
            if now >= nextProgress {
                nextProgress += 1_000_000_000
                progress(snapshot(sent: sent, seconds: Double(now - start) / 1e9))
            }
            usleep(500)
        }
        let seconds = Double(monotonicNanos() - start) / 1e9
        // Let the last packets arrive, then stop the receiver.
        usleep(500_000)
        loop.stop()
        while !receiverDone.load(ordering: .acquiring) { usleep(1000) }
        // Release the allocations (Refresh with lifetime 0) or unbind, so the next run starts clean.
        if native { releaseNative() }
        for i in clients.indices {
            if let bye = clients[i].deallocate(now: monotonicNanos()) { _ = try? transact(sockets[i], &clients[i], bye) }
        }
        return snapshot(sent: sent, seconds: seconds)
    }

    private func snapshot(sent: UInt64, seconds: Double) -> BenchResult {
        var r = BenchResult()
        r.allocations = sockets.count
        r.native = options.server.kind == .native
        r.seconds = seconds
        r.sent = sent
        r.received = received.load(ordering: .relaxed)
        histogram.withLock { h in
            r.p50 = h.percentile(0.5)
            r.p99 = h.percentile(0.99)
            r.p999 = h.percentile(0.999)
        }
        r.max = maxLatency.load(ordering: .relaxed)
        return r
    }

    /// The receiver: an event loop over every socket, recvmmsg batches, one histogram kept
    /// on the loop and published at most every 50 ms (no timer: a timer's closure would hold
    /// the loop, which holds the timer, and leak both).
    private func receive(on loop: EventLoop) {
        let rx = Receiver(bench: self)
        let registrations = sockets.map { s in (s.fdRaw, try? loop.register(fd: s.fdRaw, events: Epoll.input, handler: rx)) }
        loop.run()
        for case (let fd, let r?) in registrations { loop.deregister(fd: fd, r) }
        rx.publish()
        receiverDone.store(true, ordering: .releasing)
    }

    final class Receiver: EventHandler {
        unowned let bench: Bench
        let batch = UDPReceiveBatch(capacity: 64, slotSize: 2048)
        var histogram = LatencyHistogram()
        var worst: UInt64 = 0
        var count: UInt64 = 0
        var published: UInt64 = 0
        init(bench: Bench) { self.bench = bench }

        func handleEvent(_ events: UInt32, loop: EventLoop) {
            // Which socket is not passed; every socket is drained (they are few).
            for s in bench.sockets { drain(s.fdRaw) }
            if loop.now > published + 50_000_000 {
                published = loop.now
                publish()
            }
        }

        func publish() {
            bench.received.store(count, ordering: .relaxed)
            let h = histogram
            bench.histogram.withLock { $0 = h }
            bench.maxLatency.store(worst, ordering: .relaxed)
        }

        func drain(_ fd: Int32) {
            while case .done(let n)? = try? batch.receive(from: fd), n > 0 {
                let now = monotonicNanos()
                for j in 0..<n {
                    let len = batch.length(j)
                    let p = batch.data(j)
                    // ChannelData (4-byte header) or WireGuard transport data (16).
                    let first = p.load(as: UInt8.self)
                    let header = first & 0xC0 == 0x40 ? 4 : first == 4 ? 16 : 0
                    guard header > 0, len >= header + 16 else { continue }
                    let sentAt = UInt64(bigEndian: (p + header + 8).loadUnaligned(as: UInt64.self))
                    let latency = now > sentAt ? now - sentAt : 0
                    histogram.record(latency)
                    worst = max(worst, latency)
                    count += 1
                }
                if n < batch.capacity { break }
            }
        }
    }
}
