#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem
import FerryWire
import FerryRelay

/// The native WireGuard relay's data plane (docs/relay-protocol.md): a datagram service on the
/// relay listener's socket, on one worker. Control messages (first byte 0) go to
/// `RelayControl`; WireGuard messages (first byte 1–4) are forwarded as they are, with no header
/// added, to the session partner `RelaySessions` names.
///
/// One worker owns every session, so both directions of a session meet one table with no lock
/// and no hand-off. SO_REUSEPORT would spread a session's two ends over workers by their
/// addresses (the kernel hashes the 4-tuple), and WireGuard's packets carry nothing the relay
/// chose that could steer them back together; issue 22's XDP path is how the relay's forwarding
/// scales past one core.
///
/// Hot path, hand-written: a `recvmmsg` batch (GRO trains when the sender uses GSO), one hash
/// lookup per packet (mac1 only for initiations), sends queued straight from the receive buffers
/// with `sendmmsg`, a GRO train that goes whole to one partner sent on as one GSO train. Per
/// packet: no allocation, lock, atomic read-modify-write or dynamic dispatch; the session table
/// is moved into a local for the batch, so its accesses are not a class's.
///
/// Ownership: the worker's loop thread; static after set-up except `sessions` and `control`.
final class RelayService: DatagramService {
    /// Taken out for each batch (so the batch's accesses are a local's), put back after.
    var sessions: RelaySessions?
    var control: RelayControl
    let counters: RelayCounters
    let metrics: CounterBlock
    /// One reply slot per datagram of a batch; replies are under 100 bytes.
    let replies: UnsafeMutableRawPointer
    static let replySlot = 256
    private let batchSize: Int
    /// Per segment of the GRO train being routed: where it goes (`nowhere`: dropped).
    private let trainDestinations: UnsafeMutablePointer<SocketAddress>
    /// The kernel's UDP_MAX_SEGMENTS: a GRO train holds at most this many.
    static let maxSegments = 64
    /// The stream side (RelayStreamSide), when a TCP or TLS listener serves it: stream ends'
    /// packets arrive through `fromStreams`, and what goes to them leaves through `streamOutboxes`
    /// (one per worker) at the end of the batch.
    var hub: RelayStreamHub?
    var streamOutboxes: [[UInt8]] = []
    /// The sockets UDP ends are reached through from stream ends, per family (the relay's port;
    /// the last one read of each family).
    var udpSocket4: DatagramSocket?
    var udpSocket6: DatagramSocket?
    static let nowhere = SocketAddress(ip: .ipv4Any, port: 0)
    /// The XDP fast path (RelayService+FastPath), when engine.xdp is on and attached.
    var fastPath: FastPathState?

    init(worker: Worker, limits: RelaySessions.Limits, secrets: [String], bindsPerSecond: Double, counters: RelayCounters) {
        let now = worker.loop.now
        sessions = RelaySessions(limits: limits)
        control = RelayControl(cookies: BindCookies(now: UInt32(truncatingIfNeeded: now / 1_000_000_000), key: Crypto.randomBytes(32)),
                               secrets: secrets, bindsPerSecond: bindsPerSecond, now: now)
        self.counters = counters
        metrics = worker.metrics
        batchSize = worker.batchSize
        replies = .allocate(byteCount: worker.batchSize * RelayService.replySlot, alignment: 8)
        trainDestinations = .allocate(capacity: RelayService.maxSegments)
        trainDestinations.initialize(repeating: RelayService.nowhere, count: RelayService.maxSegments)
        worker.loop.onSweep { [weak self] now in self?.sweep(now: now) }
    }

    deinit {
        replies.deallocate()
        trainDestinations.deallocate()
    }

    /// A reload's shared secrets (`turn.static_auth_secrets`): binds from now on are checked with them.
    func update(secrets: [String]) { control.secrets = secrets.map { Array($0.utf8) } }

    /// Control (0) and WireGuard's four types (1–4); `RelayProtocol.classify` checks the rest.
    static let datagramRanges: [ClosedRange<UInt8>] = [0...4]

    func receive(_ batch: UDPReceiveBatch, count n: Int, routes: UnsafePointer<DatagramDemux.Route>,
                 route: DatagramDemux.Route, socket: DatagramSocket, now: UInt64) {
        var table = sessions.take()!
        defer { sessions = table }
        if hub != nil {
            if n > 0, let first = batch.source(0), first.ip.isIPv4 { udpSocket4 = socket } else { udpSocket6 = socket }
        }
        let queue = socket.toClient
        let metrics = self.metrics
        var packets: UInt64 = 0, bytes: UInt64 = 0
        var wall: UInt64 = 0
        for i in 0..<n where routes[i] == route {
            guard let source = batch.source(i) else { continue }
            let p = batch.data(i)
            let length = batch.length(i)
            let segment = batch.groSegment(i)
            if segment > 0 && segment < length {
                // A GRO train: every segment from one source, routed once each. Whole to one
                // partner → one GSO send; otherwise each forwardable segment on its own.
                var segments = 0, forwarded = 0, forwardedBytes = 0
                var whole = true
                var offset = 0
                while offset < length && segments < RelayService.maxSegments {
                    let size = min(segment, length - offset)
                    if let dest = forward(p + offset, size, from: source, now: now, table: &table) {
                        trainDestinations[segments] = dest
                        if forwarded > 0 && dest != trainDestinations[0] { whole = false }
                        forwarded += 1
                        forwardedBytes += size
                    } else {
                        trainDestinations[segments] = RelayService.nowhere
                        whole = false
                    }
                    segments += 1
                    offset += size
                }
                if queue.isFull { _ = socket.flush(metrics: metrics) }
                if whole && offset == length && trainDestinations[0].port != 0 {
                    queue.append(p, length, to: trainDestinations[0], segment: UInt16(segment))
                } else {
                    for k in 0..<segments where trainDestinations[k] != RelayService.nowhere {
                        let size = min(segment, length - k * segment)
                        if trainDestinations[k].port == 0 {
                            toStream(trainDestinations[k], .wireGuard, UnsafeRawBufferPointer(start: p + k * segment, count: size))
                            continue
                        }
                        if queue.isFull { _ = socket.flush(metrics: metrics) }
                        queue.append(p + k * segment, size, to: trainDestinations[k])
                    }
                }
                packets += UInt64(forwarded)
                bytes += UInt64(forwardedBytes)
                continue
            }
            if p.load(as: UInt8.self) == 0 {
                if wall == 0 { wall = wallClockSeconds() }
                let out = UnsafeMutableRawBufferPointer(start: replies + i * RelayService.replySlot, count: RelayService.replySlot)
                let (len, result) = control.handle(UnsafeRawBufferPointer(start: p, count: length), from: source, now: now, wall: wall,
                                                   sessions: &table, reply: out)
                metrics.add(counters.binds[result])
                if len > 0 {
                    if queue.isFull { _ = socket.flush(metrics: metrics) }
                    queue.append(out.baseAddress!, len, to: source)
                }
                continue
            }
            if let dest = forward(p, length, from: source, now: now, table: &table) {
                // Port 0: a stream end (RelayStreamEnd), reached through its worker.
                if dest.port == 0 {
                    toStream(dest, .wireGuard, UnsafeRawBufferPointer(start: p, count: length))
                    packets += 1
                    bytes += UInt64(length)
                    continue
                }
                if queue.isFull { _ = socket.flush(metrics: metrics) }
                queue.append(p, length, to: dest)
                packets += 1
                bytes += UInt64(length)
            }
        }
        _ = socket.flush(metrics: metrics)
        flushStreams()
        syncFastPath(&table)
        if packets > 0 {
            metrics.add(counters.packets, packets)
            metrics.add(counters.bytes, bytes)
        }
    }

    /// Where one WireGuard message goes, or nil (dropped and counted).
    @inline(__always)
    func forward(_ p: UnsafeRawPointer, _ length: Int, from source: SocketAddress, now: UInt64,
                         table: inout RelaySessions) -> SocketAddress? {
        guard case .wireGuard(let kind) = RelayProtocol.classify(p, length: length) else {
            metrics.add(counters.drops[.malformed])
            return nil
        }
        switch table.route(p, length: length, kind: kind, from: source, now: now) {
        case .forward(let dest): return dest
        case .drop(let reason):
            metrics.add(counters.drops[reason])
            return nil
        }
    }

    private func sweep(now: UInt64) {
        guard var table = sessions.take() else { return }
        defer { sessions = table }
        collectFastPath(&table, now: now)
        let expired = table.sweep(now: UInt32(truncatingIfNeeded: now / 1_000_000_000))
        syncFastPath(&table)
        if expired > 0 { metrics.add(counters.expired, UInt64(expired)) }
        metrics.set(counters.sessions, UInt64(table.sessionCount))
        metrics.set(counters.sessionsActive, UInt64(table.activeCount))
        metrics.set(counters.indices, UInt64(table.indexCount))
    }
}
