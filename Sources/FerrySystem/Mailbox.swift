#if canImport(Glibc)
import Glibc
#endif
import CFerryLinux
import Synchronization

/// The cross-worker channel: any thread posts, one loop drains. Batched: posts made while the
/// receiver has not yet drained cost no extra wakeup, and the receiver takes the whole queue
/// with one lock. For the rare work that must move between workers (accepted connections,
/// control messages, signaling between peers on different workers); never for packets.
public final class Mailbox<Message: Sendable>: Sendable {
    private let queue = Mutex<[Message]>([])
    let wakeFD: FileDescriptor

    public init() throws(SystemError) {
        wakeFD = FileDescriptor(try syscallValue("eventfd") { eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)) })
    }

    /// The mailbox owns its eventfd: the last reference closes it.
    deinit { wakeFD.close() }

    public func post(_ message: Message) {
        let wasEmpty = queue.withLock { q in
            q.append(message)
            return q.count == 1
        }
        if wasEmpty { wake() }
    }

    public func post(contentsOf messages: [Message]) {
        guard !messages.isEmpty else { return }
        let wasEmpty = queue.withLock { q in
            let empty = q.isEmpty
            q.append(contentsOf: messages)
            return empty
        }
        if wasEmpty { wake() }
    }

    /// Takes everything posted so far. Called on the receiving loop.
    public func drain() -> [Message] {
        var one: UInt64 = 0
        _ = sysRead(wakeFD.raw, &one, 8)
        return queue.withLock { q in
            let taken = q
            q.removeAll(keepingCapacity: true)
            return taken
        }
    }

    private func wake() {
        var one: UInt64 = 1
        _ = sysWrite(wakeFD.raw, &one, 8)
    }
}
