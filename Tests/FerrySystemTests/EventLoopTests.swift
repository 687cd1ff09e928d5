import Testing
import FerryCore
import FerrySystem
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

final class Counter: Sendable {
    let value = Atomic<Int>(0)
}

@Suite(.serialized) struct EventLoopOnRealThreads {
    @Test func timersAndCrossThreadTasksRun() throws {
        let engine = try Engine(workers: 2, pin: false)
        try engine.start()
        let done = Mutex<[Int]>([])
        let wait = Counter()
        for loop in engine.loops {
            loop.execute { l in
                l.schedule(after: 20_000_000) {
                    done.withLock { $0.append(l.index) }
                    _ = wait.value.add(1, ordering: .relaxed)
                }
            }
        }
        let deadline = monotonicNanos() + 5_000_000_000
        while wait.value.load(ordering: .relaxed) < 2 && monotonicNanos() < deadline { usleep(1000) }
        engine.stopAndJoin()
        #expect(done.withLock { $0.sorted() } == [0, 1])
    }

    @Test func mailboxBatchesPosts() throws {
        let box = try Mailbox<Int>()
        for i in 0..<100 { box.post(i) }
        box.post(contentsOf: [100, 101])
        #expect(box.drain() == Array(0...101))
        #expect(box.drain().isEmpty)
    }

    @Test func udpBatchRoundTrip() throws {
        let a = try Sockets.udp(bind: SocketAddress("127.0.0.1:0")!)
        let b = try Sockets.udp(bind: SocketAddress("127.0.0.1:0")!)
        defer {
            a.close()
            b.close()
        }
        let bAddr = try Sockets.localAddress(b.raw)
        let aAddr = try Sockets.localAddress(a.raw)
        let q = UDPSendQueue(capacity: 8)
        let payloads: [[UInt8]] = (0..<5).map { i in [UInt8](repeating: UInt8(i), count: 100 + i) }
        for i in 0..<5 { payloads[i].withUnsafeBytes { q.append($0.baseAddress!, $0.count, to: bAddr) } }
        let sent = payloads.withUnsafeBufferPointer { _ in q.flush(a.raw) }
        #expect(sent.sent == 5)
        let batch = UDPReceiveBatch(capacity: 8, slotSize: 2048)
        var got = 0
        let deadline = monotonicNanos() + 2_000_000_000
        while got < 5 && monotonicNanos() < deadline {
            if let n = try batch.receive(from: b.raw).value {
                for i in 0..<n {
                    #expect(batch.source(i) == aAddr)
                    #expect(batch.length(i) == 100 + got)
                    got += 1
                }
            }
        }
        #expect(got == 5)
        #expect(try batch.receive(from: b.raw).value == nil, "an empty socket reports wouldBlock")
    }
}
