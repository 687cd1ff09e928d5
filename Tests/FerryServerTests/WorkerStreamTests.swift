#if canImport(Glibc)
import Glibc
#endif
import Testing
import FerryCore
import FerrySystem
import FerryWire
import FerryTURN
@testable import FerryServer

/// The worker's stream paths through fake stream I/O: a connection accepted from one end of a
/// Unix socket pair (no network), its events delivered by hand as the loop would, the test at the
/// other end reading what the server wrote.
@Suite(.serialized) struct WorkerStreamPaths {
    final class Rig {
        let loop: EventLoop
        let registry = MetricsRegistry(blocks: 1)
        let worker: Worker
        let counters: StreamCounters
        var turn: TURNService?
        let client = SocketAddress("203.0.113.7:4000")!
        /// The test's end of the pair.
        let far: FileDescriptor
        let conn: StreamConnection

        init(withTURN: Bool = false) throws {
            loop = try EventLoop(index: 0, name: "test")
            worker = Worker(loop: loop, metrics: registry.block(0), batchSize: 4, maxDatagram: 1500)
            counters = StreamCounters(registering: registry)
            let settings = StreamSettings(contexts: nil, idleTimeoutSeconds: 60, handshakeTimeoutSeconds: 10, requestTimeoutSeconds: 10,
                                          writeLimit: 65536, maxConnections: 8, maxPerSource: 8, handshakesPerSecond: 0,
                                          handshakeBurst: 0, route: { _ in HTTPAnswer(status: 200, body: "ok\n") }, counters: counters)
            if withTURN {
                let t = makeTURN(on: worker, registry: registry).service
                settings.turn = t
                turn = t
            }
            worker.configureStreams(settings)
            var fds: [Int32] = [0, 0]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0 else {
                throw SystemError(call: "socketpair", errno: errno)
            }
            far = FileDescriptor(fds[1])
            worker.accepted(FileDescriptor(fds[0]), peer: client, kind: .tcp)
            conn = try #require(worker.connection(ConnectionID(1)))
        }

        /// The client sends `bytes`; the loop's readiness event and end-of-iteration flush follow.
        func send(_ bytes: [UInt8]) {
            _ = bytes.withUnsafeBytes { write(far.raw, $0.baseAddress, $0.count) }
            conn.handleEvent(Epoll.input, loop: loop)
            if conn.dirty { conn.flush() }
        }

        /// What the server wrote so far; `nil` once its end is closed (EOF, or a reset when it
        /// closed with our bytes unread).
        func received() -> [UInt8]? {
            var buf = [UInt8](repeating: 0, count: 65536)
            let n = buf.withUnsafeMutableBytes { read(far.raw, $0.baseAddress, $0.count) }
            if n > 0 { return Array(buf[0..<n]) }
            return n < 0 && errno == EAGAIN ? [] : nil
        }

        func closed(_ reason: StreamCounters.Close) -> UInt64 { registry.total(counters.closed[reason]) }

        func finish() {
            worker.close()
            far.close()
        }
    }

    @Test func httpIsSniffedServedAndCounted() throws {
        let rig = try Rig()
        defer { rig.finish() }
        rig.send(Array("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        let answer = String(decoding: try #require(rig.received()), as: UTF8.self)
        #expect(answer.hasPrefix("HTTP/1.1 200 OK") && answer.hasSuffix("ok\n"))
        #expect(rig.conn.carried == .http && !rig.conn.closed, "keep-alive")
        #expect(rig.registry.total(rig.counters.http.requests(200)) == 1)
        #expect(rig.registry.total(rig.counters.protocols["http"]!) == 1)
    }

    @Test func turnOverAStreamAnswersABinding() throws {
        let rig = try Rig(withTURN: true)
        defer { rig.finish() }
        let tid = TransactionID.random()
        rig.send(STUNWriter.build(method: STUN.Method.binding, class: .request, transactionID: tid) { _ in })
        let bytes = try #require(rig.received())
        // STUNMessage is a view over the bytes: everything is checked while they are borrowed.
        bytes.withUnsafeBytes { raw in
            guard case .success(let msg) = STUNMessage.parse(raw) else {
                Issue.record("not a STUN answer: \(bytes)")
                return
            }
            #expect(msg.messageClass == .success && msg.transactionID == tid)
            #expect(msg.xorAddress(STUN.Attribute.xorMappedAddress) == rig.client)
        }
        #expect(rig.conn.carried == .turn)
    }

    @Test func garbageClosesAsAProtocolError() throws {
        let rig = try Rig()
        defer { rig.finish() }
        rig.send([0x99, 0x00, 0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC])
        #expect(rig.conn.closed)
        #expect(rig.received() == nil, "the server's end is closed")
        #expect(rig.closed(.protocolError) == 1)
        #expect(rig.worker.connection(ConnectionID(1)) == nil, "and gone from the table")
    }

    @Test func stunWithoutATURNServiceIsRefused() throws {
        let rig = try Rig(withTURN: false)
        defer { rig.finish() }
        rig.send(STUNWriter.build(method: STUN.Method.binding, class: .request) { _ in })
        #expect(rig.conn.closed && rig.closed(.protocolError) == 1)
    }
}
