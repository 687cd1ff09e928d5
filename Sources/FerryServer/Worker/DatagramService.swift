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
    var registration: Registration?
    var hot = HotSocket()
    private unowned let worker: Worker

    init(index: Int32, fd: FileDescriptor, ipv6: Bool, counters: UDPListenerCounters, demux: DatagramDemux,
         services: [DatagramService], batch: UDPReceiveBatch, worker: Worker) {
        self.index = index
        self.fd = fd
        self.ipv6 = ipv6
        self.counters = counters
        self.demux = demux
        self.services = services
        self.batch = batch
        self.worker = worker
        toClient = UDPSendQueue(capacity: batch.capacity, ipv6Socket: ipv6)
    }

    func handleEvent(_ events: UInt32, loop: EventLoop) { worker.datagramsReadable(self) }

    /// Sends what services queued for clients on this socket, counting the outcome.
    func flush(metrics: CounterBlock) -> UDPSendQueue.FlushResult? {
        guard toClient.count > 0 else { return nil }
        let r = toClient.flush(fd.raw)
        metrics.add(counters.sent, UInt64(r.sent))
        if r.bufferFull > 0 { metrics.add(counters.bufferFull, UInt64(r.bufferFull)) }
        if r.failed > 0 { metrics.add(counters.sendError, UInt64(r.failed)) }
        return r
    }
}
