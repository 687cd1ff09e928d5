#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem
import Logging

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

    /// Why accept() failed. Out of descriptors or memory, the connection stays in the backlog and
    /// the level-triggered listener would wake every worker again at once: the classic spin.
    enum AcceptError: Int, CounterReason {
        case descriptorLimit, noMemory, other
        var label: String {
            switch self {
            case .descriptorLimit: "fd_limit"
            case .noMemory: "no_memory"
            case .other: "other"
            }
        }
    }

    /// After `fd_limit` or `no_memory` the listener is not watched for `backoff` (from
    /// `firstBackoff`, doubling up to `maxBackoff`, reset by the next accept that works), then
    /// watched again; the worker's other sockets go on meanwhile.
    static let firstBackoff: UInt64 = 10_000_000
    static let maxBackoff: UInt64 = 1_000_000_000
    static let logInterval: UInt64 = 10_000_000_000
    private var backoff: UInt64 = 0
    private var paused = false
    private var lastLogged: UInt64 = 0
    private let shared: Bool
    /// The worker's loop, which outlives its listeners (they are closed on it before it stops).
    private unowned let loop: EventLoop

    private let fd: FileDescriptor
    let kind: Kind
    private unowned let worker: Worker
    private var registration: Registration?

    init(fd: FileDescriptor, kind: Kind, shared: Bool, worker: Worker, loop: EventLoop) throws(SystemError) {
        self.fd = fd
        self.kind = kind
        self.worker = worker
        self.shared = shared
        self.loop = loop
        registration = try loop.register(fd: fd.raw, events: Epoll.input | (shared ? Epoll.exclusive : 0), handler: self)
    }

    func handleEvent(_ events: UInt32, loop: EventLoop) {
        guard !paused else { return }
        for _ in 0..<64 {
            switch Result(catching: { () throws(SystemError) in try Sockets.accept(fd.raw) }) {
            case .success(.wouldBlock):
                return
            case .success(.done(let (raw, peer))):
                backoff = 0
                worker.accepted(FileDescriptor(raw), peer: peer, kind: kind)
            case .failure(let error):
                let reason: AcceptError = DescriptorLimit.isExhaustion(error.errno) ? .descriptorLimit
                    : (error.errno == ENOBUFS || error.errno == ENOMEM) ? .noMemory : .other
                worker.acceptFailed(reason, errno: error.errno, listener: self)
                // A connection the client gave up on (ECONNABORTED) and the like: the next one.
                guard reason != .other else { continue }
                pause(now: loop.now)
                return
            }
        }
    }

    /// Stops watching the listener for `backoff`, then watches it again (EPOLLEXCLUSIVE cannot
    /// be modified, so the registration is dropped and made again).
    private func pause(now: UInt64) {
        backoff = backoff == 0 ? StreamListener.firstBackoff : min(backoff * 2, StreamListener.maxBackoff)
        if let registration { loop.deregister(fd: fd.raw, registration) }
        registration = nil
        paused = true
        _ = loop.schedule(after: backoff) { [self] in
            guard paused else { return }
            paused = false
            registration = try? loop.register(fd: fd.raw, events: Epoll.input | (shared ? Epoll.exclusive : 0), handler: self)
        }
    }

    /// Whether this failure should be logged (at most once per `logInterval` per listener).
    func shouldLog(now: UInt64) -> Bool {
        guard lastLogged == 0 || now &- lastLogged >= StreamListener.logInterval else { return false }
        lastLogged = now
        return true
    }

    func close(loop: EventLoop) {
        paused = false
        if let registration { loop.deregister(fd: fd.raw, registration) }
        registration = nil
    }
}
