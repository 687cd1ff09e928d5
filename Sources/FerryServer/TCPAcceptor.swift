import FerryCore
import FerrySystem

/// Accepts connections on a listening socket and hands each to `onAccept`, which decides the
/// worker (the admin listener keeps them on its own loop; TURN over TCP will spread them).
final class TCPAcceptor: EventHandler {
    /// Owned by the loop the acceptor is registered on.
    private let fd: FileDescriptor
    private let onAccept: (Int32, SocketAddress?) -> Void
    private let onError: (SystemError) -> Void
    private var registration: Registration?

    init(fd: FileDescriptor, loop: EventLoop, onAccept: @escaping (Int32, SocketAddress?) -> Void,
         onError: @escaping (SystemError) -> Void) throws(SystemError) {
        self.fd = fd
        self.onAccept = onAccept
        self.onError = onError
        registration = try loop.register(fd: self.fd.raw, events: Epoll.input, handler: self)
    }

    var address: SocketAddress? { try? Sockets.localAddress(fd.raw) }

    func handleEvent(_ events: UInt32, loop: EventLoop) {
        // Bounded so one busy listener cannot starve the loop; level-triggered epoll brings us back.
        for _ in 0..<64 {
            do {
                switch try Sockets.accept(fd.raw) {
                case .wouldBlock: return
                case .done(let (client, peer)): onAccept(client, peer)
                }
            } catch {
                // EMFILE/ENFILE/ENOBUFS: report and retry on the next wakeup rather than spin.
                onError(error)
                return
            }
        }
    }

    func close(loop: EventLoop) {
        if let registration { loop.deregister(fd: fd.raw, registration) }
        registration = nil
    }
}
