import FerrySystem

/// A listening TCP socket on one worker. With its own SO_REUSEPORT socket per worker the kernel
/// spreads connections; a single socket passed by systemd is shared by all workers with
/// EPOLLEXCLUSIVE, so one worker wakes per connection.
final class StreamListener: EventHandler {
    enum Kind: String, CaseIterable {
        /// Sniffs: TLS, STUN or HTTP by the first bytes.
        case tcp
        /// TLS first.
        case tls
        /// HTTP only, plain: the admin endpoint.
        case http
    }

    private let fd: FileDescriptor
    let kind: Kind
    private unowned let worker: Worker
    private var registration: Registration?

    init(fd: FileDescriptor, kind: Kind, shared: Bool, worker: Worker, loop: EventLoop) throws(SystemError) {
        self.fd = fd
        self.kind = kind
        self.worker = worker
        registration = try loop.register(fd: fd.raw, events: Epoll.input | (shared ? Epoll.exclusive : 0), handler: self)
    }

    func handleEvent(_ events: UInt32, loop: EventLoop) {
        for _ in 0..<64 {
            switch Result(catching: { () throws(SystemError) in try Sockets.accept(fd.raw) }) {
            case .success(.wouldBlock):
                return
            case .success(.done(let (raw, peer))):
                worker.accepted(FileDescriptor(raw), peer: peer, kind: kind)
            case .failure:
                // EMFILE and friends: try again on the next wakeup rather than spin.
                return
            }
        }
    }

    func close(loop: EventLoop) {
        if let registration { loop.deregister(fd: fd.raw, registration) }
        registration = nil
    }
}
