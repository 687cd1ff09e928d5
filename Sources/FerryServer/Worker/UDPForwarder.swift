#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem

/// The engine's plain UDP forwarding mode (`service = "forward"`): every datagram received on
/// the listener is sent on to one fixed address, from the same socket. It is the engine with no
/// protocol at all (a datagram service claiming every first byte), which is what the engine
/// benchmark measures against a C forwarder.
///
/// Hot path, hand-written: the worker's `recvmmsg` fills the preallocated batch, the send queue
/// points into the same buffers (no copy), one `sendmmsg` sends them. With GRO a slot may hold a
/// train of equal-size segments; it goes out as one GSO send with the same segment size.
/// Per packet there is no allocation, lock, atomic read-modify-write or dynamic dispatch.
final class UDPForwarder: DatagramService {
    /// The target in kernel form, written once: copied per packet rather than re-encoded.
    /// Static after construction.
    private let target: UnsafeMutablePointer<sockaddr_storage>
    private let targetLength: socklen_t
    private let metrics: CounterBlock

    init(target: SocketAddress, ipv6Socket: Bool, metrics: CounterBlock) {
        self.target = .allocate(capacity: 1)
        self.target.initialize(to: sockaddr_storage())
        self.targetLength = target.write(to: UnsafeMutableRawPointer(self.target), asIPv6: ipv6Socket)
        self.metrics = metrics
    }

    deinit { target.deallocate() }

    func receive(_ batch: UDPReceiveBatch, count n: Int, routes: UnsafePointer<DatagramDemux.Route>,
                 route: DatagramDemux.Route, socket: DatagramSocket, now: UInt64) {
        let queue = socket.toClient
        let target = UnsafeRawPointer(self.target), targetLength = self.targetLength
        for i in 0..<n where routes[i] == route {
            let length = batch.length(i)
            let segment = batch.groSegment(i)
            // The queue holds a whole batch and is flushed after each: it cannot fill here.
            queue.append(batch.data(i), length, toStorage: target, storageLength: targetLength,
                         segment: segment > 0 && segment < length ? UInt16(segment) : 0)
        }
        _ = socket.flush(metrics: metrics)
    }
}
