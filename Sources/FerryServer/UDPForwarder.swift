#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem

/// The `ferry_udp_*` series of one UDP listener (docs/metrics.md), whatever service it runs.
struct UDPListenerCounters {
    let received: CounterID
    let sent: CounterID
    let bytes: CounterID
    let truncated: CounterID
    let bufferFull: CounterID
    let sendError: CounterID
    let batches: HistogramID
}

/// The engine's plain UDP forwarding mode (`service = "forward"`): every datagram received on
/// the listener is sent on to one fixed address, from the same socket. It is the engine with no
/// protocol at all, which is what the engine benchmark measures against a C forwarder.
///
/// Hot path, hand-written: one `recvmmsg` fills the preallocated batch, the send queue points
/// into the same buffers (no copy), one `sendmmsg` sends them. With GRO a slot may hold a
/// train of equal-size segments; it goes out as one GSO send with the same segment size.
/// Per packet there is no allocation, lock, atomic read-modify-write or dynamic dispatch.
final class UDPForwarder: EventHandler {
    typealias Counters = UDPListenerCounters

    /// All owned by the worker the forwarder is registered on.
    private let fd: FileDescriptor
    /// The target in kernel form, written once: copied per packet rather than re-encoded.
    private let target: UnsafeMutablePointer<sockaddr_storage>
    private let targetLength: socklen_t
    private let batch: UDPReceiveBatch
    private let queue: UDPSendQueue
    private let metrics: CounterBlock
    private let counters: Counters
    private var registration: Registration?
    private var hot = HotSocket()

    init(fd: FileDescriptor, target: SocketAddress, batchSize: Int, maxDatagram: Int, gro: Bool,
         ipv6Socket: Bool, loop: EventLoop, metrics: CounterBlock, counters: Counters) throws(SystemError) {
        self.fd = fd
        self.target = .allocate(capacity: 1)
        self.target.initialize(to: sockaddr_storage())
        self.targetLength = target.write(to: UnsafeMutableRawPointer(self.target), asIPv6: ipv6Socket)
        batch = UDPReceiveBatch(capacity: batchSize, slotSize: gro ? 65535 : maxDatagram, gro: gro)
        queue = UDPSendQueue(capacity: batchSize, ipv6Socket: ipv6Socket)
        self.metrics = metrics
        self.counters = counters
        registration = try loop.register(fd: self.fd.raw, events: Epoll.input, handler: self)
    }

    func handleEvent(_ events: UInt32, loop: EventLoop) {
        let raw = fd.raw
        let target = UnsafeRawPointer(self.target), targetLength = self.targetLength
        let last = BatchReader.drain(batch, fd: raw, onError: { metrics.add(counters.sendError) }) { n in
            var bytes: UInt64 = 0
            var truncated: UInt64 = 0
            for i in 0..<n {
                if batch.truncated(i) { truncated += 1; continue }
                let length = batch.length(i)
                bytes += UInt64(length)
                let segment = batch.groSegment(i)
                queue.append(batch.data(i), length, toStorage: target, storageLength: targetLength, segment: segment > 0 && segment < length ? UInt16(segment) : 0)
            }
            let result = queue.flush(raw)
            metrics.add(counters.received, UInt64(n))
            metrics.add(counters.sent, UInt64(result.sent))
            metrics.add(counters.bytes, bytes)
            if truncated > 0 { metrics.add(counters.truncated, truncated) }
            if result.bufferFull > 0 { metrics.add(counters.bufferFull, UInt64(result.bufferFull)) }
            if result.failed > 0 { metrics.add(counters.sendError, UInt64(result.failed)) }
            counters.batches.observe(UInt64(n), in: metrics)
        }
        if let last { hot.settle(received: last, capacity: batch.capacity, fd: raw, registration: registration, loop: loop) }
    }

    deinit { target.deallocate() }

    func close(loop: EventLoop) {
        if let registration { loop.deregister(fd: fd.raw, registration) }
        registration = nil
    }
}
