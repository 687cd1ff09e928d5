import Testing
import FerryCore
import FerrySystem
import FerryWire
import FerryTURN
@testable import FerryServer

/// The worker's datagram paths through the fake datagram I/O: batches filled as `recvmmsg` would
/// fill them (`UDPReceiveBatch.store`), sends caught by a recording sink instead of `sendmmsg`.
/// The socket's descriptor is only its identity here: nothing is read from it or sent on it.
@Suite(.serialized) struct WorkerDatagramPaths {
    final class Recorder: DatagramService {
        var seen: [[UInt8]] = []
        func receive(_ batch: UDPReceiveBatch, count: Int, routes: UnsafePointer<DatagramDemux.Route>,
                     route: DatagramDemux.Route, socket: DatagramSocket, now: UInt64) {
            for i in 0..<count where routes[i] == route {
                seen.append(Array(UnsafeRawBufferPointer(start: batch.data(i), count: batch.length(i))))
            }
        }
    }

    final class FakeSink: DatagramSink {
        var sent: [UDPSendQueue.Entry] = []
        func send(_ queue: UDPSendQueue, fd: Int32) -> UDPSendQueue.FlushResult {
            sent += queue.entries
            let r = UDPSendQueue.FlushResult(sent: queue.count)
            queue.reset()
            return r
        }
    }

    /// A worker on a loop that never runs, its metrics, and a placeholder descriptor.
    struct Rig {
        let loop: EventLoop
        let registry = MetricsRegistry(blocks: 1)
        let worker: Worker
        let fd: FileDescriptor
        let counters: UDPListenerCounters
        let client = SocketAddress("203.0.113.9:5000")!

        init() throws {
            loop = try EventLoop(index: 0, name: "test")
            worker = Worker(loop: loop, metrics: registry.block(0), batchSize: 8, maxDatagram: 200)
            fd = try Sockets.udp(bind: SocketAddress("127.0.0.1:0")!)
            counters = UDPListenerCounters(registering: registry, listener: "test")
        }

        func udp(_ reason: String) -> UInt64 {
            registry.total(registry.counter("ferry_udp_drops_total", "", labels: [("listener", "test"), ("reason", reason)]))
        }
    }

    @Test func eachDatagramReachesTheServiceOfItsFirstByte() throws {
        let rig = try Rig()
        defer { rig.fd.close() }
        let turnLike = Recorder(), native = Recorder()
        let socket = try rig.worker.attachDatagramSocket(
            fd: rig.fd, ipv6: false, counters: rig.counters,
            services: [(turnLike, [DatagramDemux.Range.stun, DatagramDemux.Range.channelData]), (native, [DatagramDemux.Range.nativeRelay])],
            sink: FakeSink())
        let datagrams: [[UInt8]] = [[0x00, 0x01, 0, 0], [0x40, 0x00, 0, 1, 9], [0xC0, 1, 2], [0x16, 0xFE, 0xFD], [], [UInt8](repeating: 0x40, count: 300)]
        for (i, d) in datagrams.enumerated() { socket.batch.store(i, d, from: rig.client) }
        rig.worker.dispatch(socket, count: datagrams.count, now: 1)
        #expect(turnLike.seen == [datagrams[0], datagrams[1]], "in arrival order, STUN and ChannelData to one service")
        #expect(native.seen == [datagrams[2]])
        #expect(rig.udp("unclaimed") == 2, "DTLS (20–63) and an empty datagram")
        #expect(rig.udp("truncated") == 1, "longer than engine.max_datagram, whatever its first byte")
        #expect(rig.registry.total(rig.counters.received) == 6)
    }

    @Test func theForwarderSendsEverythingToItsTarget() throws {
        let rig = try Rig()
        defer { rig.fd.close() }
        let sink = FakeSink()
        let target = SocketAddress("198.51.100.7:9")!
        let forwarder = UDPForwarder(target: target, ipv6Socket: false, metrics: rig.registry.block(0))
        let socket = try rig.worker.attachDatagramSocket(fd: rig.fd, ipv6: false, counters: rig.counters,
                                                         services: [(forwarder, [0...255])], sink: sink)
        socket.batch.store(0, [1, 2, 3], from: rig.client)
        socket.batch.store(1, [0xFF], from: rig.client)
        rig.worker.dispatch(socket, count: 2, now: 1)
        #expect(sink.sent == [.init(bytes: [1, 2, 3], destination: target, segment: 0), .init(bytes: [0xFF], destination: target, segment: 0)])
        #expect(rig.registry.total(rig.counters.sent) == 2)
    }

    @Test func turnAnswersABindingAndCountsWhatItCannotParse() throws {
        let rig = try Rig()
        defer { rig.fd.close() }
        let sink = FakeSink()
        let (turn, counters) = makeTURN(on: rig.worker, registry: rig.registry)
        let socket = try rig.worker.attachDatagramSocket(fd: rig.fd, ipv6: false, counters: rig.counters,
                                                         services: [(turn, TURNService.datagramRanges)], fallback: turn, sink: sink)
        let tid = TransactionID.random()
        socket.batch.store(0, STUNWriter.build(method: STUN.Method.binding, class: .request, transactionID: tid) { _ in }, from: rig.client)
        socket.batch.store(1, [0x16, 0xFE, 0xFD, 0x00], from: rig.client)   // DTLS: TURN's fallback, malformed
        socket.batch.store(2, [0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4], from: rig.client)   // ChannelData, no allocation
        rig.worker.dispatch(socket, count: 3, now: 1)
        #expect(sink.sent.count == 1)
        let reply = try #require(sink.sent.first)
        #expect(reply.destination == rig.client)
        // STUNMessage is a view over the bytes: everything is checked while they are borrowed.
        reply.bytes.withUnsafeBytes { raw in
            guard case .success(let msg) = STUNMessage.parse(raw) else {
                Issue.record("the answer is not STUN")
                return
            }
            #expect(msg.messageClass == .success && msg.transactionID == tid)
            #expect(msg.xorAddress(STUN.Attribute.xorMappedAddress) == rig.client, "the client learns its address")
        }
        #expect(rig.registry.total(counters.drops[.malformed]) == 1)
        #expect(rig.registry.total(counters.drops[.noAllocation]) == 1)
        #expect(rig.udp("unclaimed") == 0, "TURN is the socket's fallback")
    }
}
