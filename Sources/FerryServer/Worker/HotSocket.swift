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
