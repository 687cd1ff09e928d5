/// Bytes read from a connection and not yet consumed, with a read offset: consuming a frame moves
/// the offset (no `removeFirst` shifting the rest per frame); the unread tail moves to the front
/// only when new bytes need the room. Empty, it holds no memory, so an idle connection costs
/// nothing here. Owned by one connection on its loop thread.
struct InputBuffer {
    private var storage: [UInt8] = []
    private var start = 0

    var count: Int { storage.count - start }
    var isEmpty: Bool { count == 0 }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if start > 0 && (start >= storage.count / 2 || storage.count + bytes.count > storage.capacity) {
            storage.removeFirst(start)  // one move of the unread tail per compaction, not per frame
            start = 0
        }
        storage.append(contentsOf: bytes)
    }

    /// Drops `n` consumed bytes from the front; frees the memory once nothing is left.
    mutating func consume(_ n: Int) {
        precondition(n <= count)
        start += n
        if start == storage.count {
            storage = []
            start = 0
        }
    }

    mutating func removeAll() {
        storage = []
        start = 0
    }

    /// The unread bytes. The pointer is valid only inside `body`; `body` must not append.
    func withUnreadBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[start...])) }
    }

    /// The unread bytes, writable in place (WebSocket unmasking).
    mutating func withUnreadMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        let s = start
        return try storage.withUnsafeMutableBytes { try body(UnsafeMutableRawBufferPointer(rebasing: $0[s...])) }
    }

    /// A copy of the unread bytes (handing them to a parser that keeps its own buffer).
    var unread: [UInt8] { Array(storage[start...]) }
}
