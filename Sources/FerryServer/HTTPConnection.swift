#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem
import FerryWire
import Logging

/// One admin connection: reads request heads, answers, and closes on error, on
/// `Connection: close`, or after the request timeout without a complete request.
final class HTTPConnection: EventHandler {
    private let fd: FileDescriptor
    private unowned let loop: EventLoop
    private unowned let server: AdminServer
    private var registration: Registration?
    private var session = HTTPSession()
    private var output: [UInt8] = []
    private var closeAfterWrite = false
    /// After an answer that closes the connection: write side shut, unread input discarded until
    /// the client closes or a short timer ends, so the kernel does not reset the connection
    /// (and destroy the answer) over bytes we never read.
    private var lingering = false
    private var timer: TimerID?
    private let timeoutNanos: UInt64
    private static let limits = HTTPHeadParser.Limits()

    init(fd: FileDescriptor, loop: EventLoop, timeoutNanos: UInt64, server: AdminServer) throws(SystemError) {
        self.fd = fd
        self.loop = loop
        self.server = server
        self.timeoutNanos = timeoutNanos
        registration = try loop.register(fd: self.fd.raw, events: Epoll.input | Epoll.readHangup, handler: self)
        armTimer()
    }

    private func armTimer() {
        if let timer { loop.cancel(timer) }
        timer = loop.schedule(after: timeoutNanos) { [weak self] in
            guard let self else { return }
            self.timer = nil
            // A request that never completed gets 408; an idle keep-alive connection just closes.
            if self.session.hasPartialRequest {
                let outcome = self.session.timedOut()
                self.server.count(outcome)
                self.send(outcome.output, thenClose: true)
            } else {
                self.close()
            }
        }
    }

    func handleEvent(_ events: UInt32, loop: EventLoop) {
        if events & Epoll.output != 0 { flush() }
        if events & (Epoll.input | Epoll.readHangup | Epoll.hangup | Epoll.error) != 0 && registration != nil {
            if lingering { discardInput() } else if !closeAfterWrite { readAvailable() }
        }
        if events & (Epoll.error | Epoll.hangup) != 0 && registration != nil { close() }
    }

    private func readAvailable() {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while registration != nil && !closeAfterWrite {
            let result = chunk.withUnsafeMutableBytes { buf in Result { () throws(SystemError) in try Sockets.read(fd.raw, into: buf) } }
            switch result {
            case .failure: close(); return
            case .success(.wouldBlock): return
            case .success(.done(0)): close(); return
            case .success(.done(let n)):
                let outcome = session.receive(chunk[0..<n], route: server.routeFunction)
                server.count(outcome)
                if !outcome.output.isEmpty || session.closing { send(outcome.output, thenClose: session.closing) }
                if !outcome.statuses.isEmpty { armTimer() }
            }
        }
    }

    private func discardInput() {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while registration != nil {
            let result = chunk.withUnsafeMutableBytes { buf in Result { () throws(SystemError) in try Sockets.read(fd.raw, into: buf) } }
            switch result {
            case .success(.wouldBlock): return
            case .success(.done(let n)) where n > 0: continue
            default: close(); return
            }
        }
    }

    private func send(_ bytes: [UInt8], thenClose: Bool) {
        output.append(contentsOf: bytes)
        closeAfterWrite = closeAfterWrite || thenClose
        flush()
    }

    private func flush() {
        while !output.isEmpty {
            let result = output.withUnsafeBytes { buf in Result { () throws(SystemError) in try Sockets.write(fd.raw, from: buf) } }
            switch result {
            case .failure: close(); return
            case .success(.wouldBlock):
                if let registration { try? loop.modify(fd: fd.raw, registration, events: Epoll.input | Epoll.output | Epoll.readHangup) }
                return
            case .success(.done(let n)): output.removeFirst(n)
            }
        }
        if closeAfterWrite {
            guard !lingering, let registration else { return }
            lingering = true
            Sockets.shutdownWrite(fd.raw)
            try? loop.modify(fd: fd.raw, registration, events: Epoll.input | Epoll.readHangup)
            if let timer { loop.cancel(timer) }
            timer = loop.schedule(after: 2_000_000_000) { [weak self] in self?.close() }
            discardInput()
            return
        }
        if let registration { try? loop.modify(fd: fd.raw, registration, events: Epoll.input | Epoll.readHangup) }
    }

    func close() {
        guard let registration else { return }
        loop.deregister(fd: fd.raw, registration)
        self.registration = nil
        if let timer { loop.cancel(timer) }
        timer = nil
        server.closed(self)
        fd.close()
    }
}
