#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem
import Logging
import FerryTLS

/// One worker: an event loop's thread and everything that lives on it. It owns the UDP listener
/// sockets (reading them in batches and routing each datagram by its first byte to the service
/// that registered for it), the stream listeners and the table of stream connections with their
/// limits and timeouts. It knows no protocol: TURN, the forwarder and signaling are services
/// that register here (`Server` wires them up, one line each).
///
/// Ownership: everything here belongs to the worker's loop thread. Static after set-up: `loop`,
/// `metrics`, the read batches and buffers. Owned by the loop: the socket and connection tables.
final class Worker {
    unowned let loop: EventLoop
    let metrics: CounterBlock
    let batchSize: Int
    /// Reads of non-GRO sockets (all of them share it: one socket is read at a time).
    private let batch: UDPReceiveBatch
    private var groBatch: UDPReceiveBatch?
    private let maxDatagram: Int
    /// Per datagram of the batch being dispatched: its route.
    private let routes: UnsafeMutablePointer<DatagramDemux.Route>
    private(set) var datagramSockets: [DatagramSocket] = []

    // Stream connections (TURN over TCP and TLS, HTTPS and signaling on shared ports).
    private var streams: [ConnectionID: StreamConnection] = [:]
    private var nextStreamID: UInt32 = 1
    private var dirtyStreams: [StreamConnection] = []
    private var activeByKind: [StreamListener.Kind: Int] = [:]
    /// Open connections per source IP (`stream.max_connections_per_source`).
    private var bySource: [IPAddress: Int] = [:]
    private var streamListeners: [StreamListener] = []
    private(set) var streamSettings: StreamSettings?
    /// Where every connection of this worker reads into (one read at a time on this thread).
    let streamReadBuffer: UnsafeMutableRawBufferPointer
    /// Services to tell when the worker stops (relayed sockets, allocations).
    private var onClose: [() -> Void] = []

    init(loop: EventLoop, metrics: CounterBlock, batchSize: Int, maxDatagram: Int) {
        self.loop = loop
        self.metrics = metrics
        self.batchSize = batchSize
        self.maxDatagram = maxDatagram
        batch = UDPReceiveBatch(capacity: batchSize, slotSize: maxDatagram)
        routes = .allocate(capacity: batchSize)
        routes.initialize(repeating: DatagramDemux.unclaimed, count: batchSize)
        streamReadBuffer = .allocate(byteCount: StreamConnection.readChunk, alignment: 16)
    }

    deinit {
        routes.deallocate()
        streamReadBuffer.deallocate()
    }

    // MARK: Datagrams

    /// Adds a UDP listener socket served by `services` (each with the first-byte ranges it
    /// claims; `fallback` also gets what nobody claimed). `gro` reads with GRO-sized slots: only
    /// for services that forward whole trains. Returns the socket's index.
    @discardableResult
    func addDatagramSocket(fd: FileDescriptor, counters: UDPListenerCounters,
                           services: [(service: DatagramService, ranges: [ClosedRange<UInt8>])],
                           fallback: DatagramService? = nil, gro: Bool = false) throws -> Int32 {
        let ipv6 = !(try Sockets.localAddress(fd.raw)).ip.isIPv4
        let socket = try attachDatagramSocket(fd: fd, ipv6: ipv6, counters: counters, services: services, fallback: fallback, gro: gro)
        socket.registration = try loop.register(fd: fd.raw, events: Epoll.input, handler: socket)
        return socket.index
    }

    /// The socket without its epoll registration: what `addDatagramSocket` registers, and what a
    /// test drives through `dispatch` with a fake sink.
    func attachDatagramSocket(fd: FileDescriptor, ipv6: Bool, counters: UDPListenerCounters,
                              services: [(service: DatagramService, ranges: [ClosedRange<UInt8>])],
                              fallback: DatagramService? = nil, gro: Bool = false,
                              sink: DatagramSink = KernelDatagramSink.shared) throws -> DatagramSocket {
        var demux = DatagramDemux()
        for (i, s) in services.enumerated() {
            for r in s.ranges { try demux.claim(r, route: DatagramDemux.Route(i + 1)) }
        }
        if let fallback, let i = services.firstIndex(where: { $0.service === fallback }) {
            demux.fallback(DatagramDemux.Route(i + 1))
        }
        let readBatch: UDPReceiveBatch
        if gro {
            if groBatch == nil { groBatch = UDPReceiveBatch(capacity: batchSize, slotSize: 65535, gro: true) }
            readBatch = groBatch!
        } else {
            readBatch = batch
        }
        let socket = DatagramSocket(index: Int32(datagramSockets.count), fd: fd, ipv6: ipv6, counters: counters, demux: demux,
                                    services: services.map(\.service), batch: readBatch, sink: sink, worker: self)
        datagramSockets.append(socket)
        return socket
    }

    /// Reads `socket` in batches; per datagram: counts it, drops it if truncated or unclaimed,
    /// else notes its route. Then each service whose route occurs gets the batch, once.
    func datagramsReadable(_ socket: DatagramSocket) {
        let fd = socket.fd.raw
        let batch = socket.batch
        let metrics = self.metrics
        let counters = socket.counters
        let now = loop.now
        let last = BatchReader.drain(batch, fd: fd, onError: { metrics.add(counters.sendError) }) { n in
            dispatch(socket, count: n, now: now)
        }
        if let last { socket.hot.settle(received: last, capacity: batch.capacity, fd: fd, registration: socket.registration, loop: loop) }
    }

    /// One batch of `socket`, read into its batch: counted, demultiplexed, handed to services.
    @inline(__always)
    func dispatch(_ socket: DatagramSocket, count n: Int, now: UInt64) {
        let batch = socket.batch
        let counters = socket.counters
        let demux = socket.demux
        let services = socket.services
        let routes = self.routes
        let metrics = self.metrics
        counters.batches.observe(UInt64(n), in: metrics)
        var bytes: UInt64 = 0
        var truncated: UInt64 = 0
        var unclaimed: UInt64 = 0
        var present: UInt64 = 0  // bit r: route r occurs in this batch
        for i in 0..<n {
            let length = batch.length(i)
            bytes += UInt64(length)
            // Longer than engine.max_datagram: the engine's drop, not a protocol error.
            if batch.truncated(i) || length == 0 {
                if length > 0 { truncated += 1 } else { unclaimed += 1 }
                routes[i] = DatagramDemux.unclaimed
                continue
            }
            let r = demux.route(batch.data(i).load(as: UInt8.self))
            routes[i] = r
            if r == DatagramDemux.unclaimed { unclaimed += 1 }
            present |= 1 << UInt64(r & 63)
        }
        metrics.add(counters.received, UInt64(n))
        metrics.add(counters.bytes, bytes)
        if truncated > 0 { metrics.add(counters.truncated, truncated) }
        if unclaimed > 0 { metrics.add(counters.unclaimed, unclaimed) }
        var r = 1
        present >>= 1
        while present != 0 {
            if present & 1 != 0 {
                services[r - 1].receive(batch, count: n, routes: routes, route: DatagramDemux.Route(r), socket: socket, now: now)
            }
            present >>= 1
            r += 1
        }
    }

    // MARK: Streams

    func addStreamListener(fd: FileDescriptor, kind: StreamListener.Kind, shared: Bool) throws(SystemError) {
        streamListeners.append(try StreamListener(fd: fd, kind: kind, shared: shared, worker: self, loop: loop))
    }

    func configureStreams(_ settings: StreamSettings) {
        streamSettings = settings
        loop.onIterationEnd { [unowned self] in self.flushStreams() }
        loop.onSweep { [unowned self] now in self.sweepStreams(now: now) }
    }

    /// accept() failed on one of this worker's listeners: counted, logged at most every 10 s per
    /// listener with the limit and the descriptors open, and noted for readiness.
    func acceptFailed(_ reason: StreamListener.AcceptError, errno e: Int32, listener: StreamListener) {
        guard let settings = streamSettings else { return }
        metrics.add(settings.counters.acceptErrors[reason])
        if reason == .descriptorLimit { DescriptorLimit.hit(now: loop.now) }
        guard reason != .other, listener.shouldLog(now: loop.now) else { return }
        Worker.logger.error("cannot accept connections: the listener pauses (10 ms doubling to 1 s) until it can", metadata: [
            "reason": "\(reason.label)", "error": "\(String(cString: strerror(e)))", "listener": "\(listener.kind.rawValue)",
            "open_files": "\(DescriptorLimit.openCount())", "open_files_limit": "\(DescriptorLimit.limit())",
        ])
    }

    static let logger = Logger(label: "ferryd.listener")

    func accepted(_ fd: FileDescriptor, peer: SocketAddress?, kind: StreamListener.Kind) {
        guard let settings = streamSettings, let peer else {
            fd.close()
            return
        }
        guard streams.count < settings.maxConnections else {
            metrics.add(settings.counters.closed[.limit])
            if let refused = settings.counters.refused { metrics.add(refused) }
            fd.close()
            return
        }
        // One address cannot hold the whole connection limit.
        guard bySource[peer.ip, default: 0] < settings.maxPerSource else {
            metrics.add(settings.counters.closed[.sourceLimit])
            if let refused = settings.counters.refused { metrics.add(refused) }
            fd.close()
            return
        }
        Sockets.setNoDelay(fd.raw)
        // Ids count up and skip any still open, so an id is never shared by two live connections.
        while streams[ConnectionID(nextStreamID)] != nil { nextStreamID = nextStreamID == .max ? 1 : nextStreamID + 1 }
        let id = ConnectionID(nextStreamID)
        nextStreamID = nextStreamID == .max ? 1 : nextStreamID + 1
        metrics.add(settings.counters.accepted[kind]!)
        do {
            let conn = try StreamConnection(id: id, fd: fd, peer: peer, kind: kind, worker: self, loop: loop, settings: settings)
            if !conn.closed {
                streams[id] = conn
                bySource[peer.ip, default: 0] += 1
                activeByKind[kind, default: 0] += 1
                metrics.set(settings.counters.active[kind]!, UInt64(activeByKind[kind]!))
            }
        } catch {
            fd.close()
        }
    }

    func connection(_ id: ConnectionID) -> StreamConnection? { streams[id] }

    func streamClosed(_ conn: StreamConnection) {
        guard streams.removeValue(forKey: conn.id) != nil else { return }
        if let n = bySource[conn.peer.ip] { bySource[conn.peer.ip] = n > 1 ? n - 1 : nil }
        if let settings = streamSettings {
            activeByKind[conn.kind, default: 1] -= 1
            metrics.set(settings.counters.active[conn.kind]!, UInt64(max(0, activeByKind[conn.kind]!)))
        }
    }

    func markDirty(_ conn: StreamConnection) { dirtyStreams.append(conn) }

    private func flushStreams() {
        guard !dirtyStreams.isEmpty else { return }
        let batch = dirtyStreams
        dirtyStreams.removeAll(keepingCapacity: true)
        for c in batch where c.dirty { c.flush() }
    }

    /// Once a second: each connection's state machine says whether a deadline passed
    /// (`stream.idle_timeout_seconds`, `tls.handshake_timeout_seconds`,
    /// `stream.request_timeout_seconds`).
    private func sweepStreams(now: UInt64) {
        guard let settings = streamSettings else { return }
        for c in Array(streams.values) { c.tick(now: now) }
        settings.handshakes.sweep(now: now)
    }

    /// A reload's new certificates: new handshakes use them, established sessions keep theirs.
    func updateTLS(_ contexts: TLSContextSet) { streamSettings?.contexts = contexts }

    // MARK: Stopping

    /// Runs `body` when the worker closes (services release what they hold).
    func onStop(_ body: @escaping () -> Void) { onClose.append(body) }

    func close() {
        for c in Array(streams.values) { c.close(.shutdown) }
        for l in streamListeners { l.close(loop: loop) }
        streamListeners.removeAll()
        for body in onClose { body() }
        onClose.removeAll()
        for s in datagramSockets { if let r = s.registration { loop.deregister(fd: s.fd.raw, r) } }
        datagramSockets.removeAll()
    }
}
