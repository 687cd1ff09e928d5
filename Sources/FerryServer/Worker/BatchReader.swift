import FerrySystem

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
