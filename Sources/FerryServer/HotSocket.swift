import FerrySystem

/// The hot-socket policy shared by every batched UDP reader: after a full batch the socket
/// leaves epoll and is read every loop iteration; after a partial one it goes back (see
/// `EventLoop.suspendWakeups` for why).
struct HotSocket {
    private(set) var hot = false

    mutating func settle(received n: Int, capacity: Int, fd: Int32, registration: Registration?, loop: EventLoop) {
        guard let registration else { return }
        if n == capacity {
            if !hot {
                loop.suspendWakeups(fd: fd, registration, events: Epoll.input)
                hot = true
            }
        } else if hot {
            loop.resumeWakeups(fd: fd, registration)
            hot = false
        }
    }
}

/// The read loop every batched UDP reader shares: up to 16 `recvmmsg` batches per wakeup (then
/// other sockets on the loop get a turn), `body` called with each batch's count. Returns the last
/// count (0 when the socket was empty, the capacity after 16 full batches) for
/// `HotSocket.settle`, or nil after a read error, which `onError` counts.
enum BatchReader {
    static let maxBatches = 16

    @inline(__always)
    static func drain(_ batch: UDPReceiveBatch, fd: Int32, onError: () -> Void, _ body: (Int) -> Void) -> Int? {
        for _ in 0..<maxBatches {
            let n: Int
            do {
                guard let got = try batch.receive(from: fd).value else { return 0 }
                n = got
            } catch {
                onError()
                return nil
            }
            body(n)
            if n < batch.capacity { return n }
        }
        return batch.capacity
    }
}
