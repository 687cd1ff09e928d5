import FerryCore
import FerrySystem

/// A protocol served on a worker's UDP listener sockets (TURN, the plain forwarder, later the
/// native relay). It registers with `Worker.addDatagramSocket` for first-byte ranges (see
/// `DatagramDemux`) and is then handed each batch once: one dynamic call per batch, never per
/// datagram, so the per-packet loop inside the service stays concrete.
protocol DatagramService: AnyObject {
    /// The datagrams of one `recvmmsg` batch on `socket` whose route is `route`: for every `i`
    /// below `count` with `routes[i] == route`, `batch.data(i)` holds one datagram (truncated
    /// ones are already dropped and counted). What the service queues on `socket.toClient` must
    /// be sent or copied before it returns: the batch is reused for the next read.
    func receive(_ batch: UDPReceiveBatch, count: Int, routes: UnsafePointer<DatagramDemux.Route>,
                 route: DatagramDemux.Route, socket: DatagramSocket, now: UInt64)
}

/// Where a socket's queued datagrams go: the kernel (`sendmmsg`), or a test's recorder (the
/// fake datagram I/O that runs the worker's paths without a network). One call per flush.
protocol DatagramSink: AnyObject {
    func send(_ queue: UDPSendQueue, fd: Int32) -> UDPSendQueue.FlushResult
}

final class KernelDatagramSink: DatagramSink, Sendable {
    static let shared = KernelDatagramSink()
    func send(_ queue: UDPSendQueue, fd: Int32) -> UDPSendQueue.FlushResult { queue.flush(fd) }
}

/// One UDP listener socket on a worker (one per listener per worker, from the SO_REUSEPORT
/// group or systemd), with the services its demux routes to and its queue of datagrams back to
/// clients. Owned by the worker's loop thread; static after set-up except `hot`.
final class DatagramSocket: EventHandler {
    /// The socket's index on its worker: `ClientTransport.udp(listener:)` names it.
    let index: Int32
    let fd: FileDescriptor
    let ipv6: Bool
    let counters: UDPListenerCounters
    /// Datagrams to clients, sent from this socket; any service may append, then `flush`.
    let toClient: UDPSendQueue
    let demux: DatagramDemux
    /// `services[route - 1]` serves `route`.
    let services: [DatagramService]
    /// Reads land here: the worker's shared batch, or one with GRO-sized slots.
    let batch: UDPReceiveBatch
    let sink: DatagramSink
    var registration: Registration?
    var hot = HotSocket()
    private unowned let worker: Worker

    init(index: Int32, fd: FileDescriptor, ipv6: Bool, counters: UDPListenerCounters, demux: DatagramDemux,
         services: [DatagramService], batch: UDPReceiveBatch, sink: DatagramSink, worker: Worker) {
        self.index = index
        self.fd = fd
        self.ipv6 = ipv6
        self.counters = counters
        self.demux = demux
        self.services = services
        self.batch = batch
        self.sink = sink
        self.worker = worker
        toClient = UDPSendQueue(capacity: batch.capacity, ipv6Socket: ipv6)
    }

    func handleEvent(_ events: UInt32, loop: EventLoop) { worker.datagramsReadable(self) }

    /// Sends what services queued for clients on this socket, counting the outcome.
    func flush(metrics: CounterBlock) -> UDPSendQueue.FlushResult? {
        guard toClient.count > 0 else { return nil }
        let r = sink.send(toClient, fd: fd.raw)
        metrics.add(counters.sent, UInt64(r.sent))
        if r.bufferFull > 0 { metrics.add(counters.bufferFull, UInt64(r.bufferFull)) }
        if r.failed > 0 { metrics.add(counters.sendError, UInt64(r.failed)) }
        return r
    }
}

/// The `ferry_udp_*` series of one UDP listener (docs/metrics.md), whatever services it runs;
/// the worker counts them, so every service gets them for free.
struct UDPListenerCounters {
    let received: CounterID
    let sent: CounterID
    let bytes: CounterID
    let truncated: CounterID
    /// Datagrams whose first byte no service on the socket claims (or empty ones).
    let unclaimed: CounterID
    let bufferFull: CounterID
    let sendError: CounterID
    let batches: HistogramID

    init(registering registry: some CounterRegistry, listener: String) {
        let l = ("listener", listener)
        func drop(_ reason: String) -> CounterID {
            registry.counter("ferry_udp_drops_total", "Datagrams dropped by the engine, by listener and reason.", labels: [l, ("reason", reason)])
        }
        received = registry.counter("ferry_udp_datagrams_received_total", "Datagrams (or GRO trains) read from a listener socket.", labels: [l])
        sent = registry.counter("ferry_udp_datagrams_sent_total", "Datagrams (or GSO trains) written to a listener socket.", labels: [l])
        bytes = registry.counter("ferry_udp_bytes_received_total", "Bytes read from a listener socket.", labels: [l])
        truncated = drop("truncated")
        unclaimed = drop("unclaimed")
        bufferFull = drop("buffer_full")
        sendError = drop("send_error")
        batches = registry.histogram("ferry_udp_batch_size", "Datagrams returned per recvmmsg call.",
                                     bounds: [1, 2, 4, 8, 16, 32, 64, 128, 256], labels: [l])
    }
}
