#if canImport(Glibc)
import Glibc
#endif
import FerrySystem
import FerryWire
import Logging

/// An HTTP answer from a route.
struct HTTPAnswer {
    var status: Int
    var contentType = "text/plain; charset=utf-8"
    var body: [UInt8]
    var headers: [(String, String)] = []

    init(status: Int, contentType: String = "text/plain; charset=utf-8", body: String, headers: [(String, String)] = []) {
        self.status = status
        self.contentType = contentType
        self.body = Array(body.utf8)
        self.headers = headers
    }
}

/// The admin endpoint: `/metrics`, `/healthz`, `/readyz` over HTTP/1.1 with keep-alive. It runs
/// on the control thread's loop, apart from the workers, so a scrape never delays a packet and
/// a flood of relayed traffic never hides the server's health.
final class AdminServer {
    struct Counters {
        let requests: (Int) -> CounterID
        let rejected: CounterID
        let refusedConnections: CounterID
    }

    private let loop: EventLoop
    private let logger: Logger
    private let route: (HTTPRequestHead) -> HTTPAnswer
    private let maxConnections: Int
    private let timeoutNanos: UInt64
    private let metrics: CounterBlock
    private let counters: Counters
    private var acceptor: TCPAcceptor?
    /// Live connections, owned by `loop`.
    private var connections: [ObjectIdentifier: HTTPConnection] = [:]

    init(fd: FileDescriptor, loop: EventLoop, logger: Logger, maxConnections: Int, timeoutSeconds: Int,
         metrics: CounterBlock, counters: Counters, route: @escaping (HTTPRequestHead) -> HTTPAnswer) throws(SystemError) {
        self.loop = loop
        self.logger = logger
        self.route = route
        self.maxConnections = maxConnections
        self.timeoutNanos = UInt64(timeoutSeconds) * 1_000_000_000
        self.metrics = metrics
        self.counters = counters
        acceptor = try TCPAcceptor(fd: fd, loop: loop, onAccept: { [unowned self] fd, peer in self.accepted(fd, peer) },
                                   onError: { [logger] error in logger.warning("admin accept failed", metadata: ["error": "\(error)"]) })
    }

    var address: SocketAddress? { acceptor?.address }

    private func accepted(_ raw: Int32, _ peer: SocketAddress?) {
        let fd = FileDescriptor(raw)
        guard connections.count < maxConnections else {
            metrics.add(counters.refusedConnections)
            fd.close()
            return
        }
        do {
            let c = try HTTPConnection(fd: fd, loop: loop, timeoutNanos: timeoutNanos, server: self)
            connections[ObjectIdentifier(c)] = c
        } catch {
            logger.warning("admin connection setup failed", metadata: ["error": "\(error)"])
        }
    }

    fileprivate func answer(_ head: HTTPRequestHead) -> HTTPAnswer {
        let a: HTTPAnswer
        if head.method != "GET" && head.method != "HEAD" {
            a = HTTPAnswer(status: 405, body: "method not allowed\n", headers: [("Allow", "GET, HEAD")])
        } else if let cl = head.header("Content-Length"), cl != "0" {
            a = HTTPAnswer(status: 400, body: "request bodies are not accepted\n")
        } else if head.header("Transfer-Encoding") != nil {
            a = HTTPAnswer(status: 400, body: "request bodies are not accepted\n")
        } else {
            a = route(head)
        }
        metrics.add(counters.requests(a.status))
        return a
    }

    fileprivate func rejected() { metrics.add(counters.rejected) }

    fileprivate func closed(_ c: HTTPConnection) { connections[ObjectIdentifier(c)] = nil }

    func close() {
        acceptor?.close(loop: loop)
        acceptor = nil
        for c in connections.values { c.close() }
        connections.removeAll()
    }
}

/// One admin connection: reads request heads, answers, and closes on error, on
/// `Connection: close`, or after the request timeout without a complete request.
final class HTTPConnection: EventHandler {
    private let fd: FileDescriptor
    private unowned let loop: EventLoop
    private unowned let server: AdminServer
    private var registration: Registration?
    private var input: [UInt8] = []
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
            if !self.input.isEmpty { self.fail(408) } else { self.close() }
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
                input.append(contentsOf: chunk[0..<n])
                processInput()
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

    private func processInput() {
        while !input.isEmpty && !closeAfterWrite {
            let parsed = input.withUnsafeBytes { HTTPHeadParser.parse($0, limits: HTTPConnection.limits) }
            switch parsed {
            case .incomplete:
                return
            case .failure(let failure):
                fail(failure.status)
                return
            case .complete(let head, let consumed):
                input.removeFirst(consumed)
                let answer = server.answer(head)
                let keep = head.keepAlive && answer.status < 400
                send(HTTPResponse.encode(status: answer.status, contentType: answer.contentType, body: answer.body,
                                         close: !keep, headOnly: head.method == "HEAD", extraHeaders: answer.headers),
                     thenClose: !keep)
                armTimer()
            }
        }
    }

    private func fail(_ status: Int) {
        server.rejected()
        input.removeAll()
        let body = Array("\(status) \(HTTPResponse.reasonPhrase(status))\n".utf8)
        send(HTTPResponse.encode(status: status, body: body, close: true), thenClose: true)
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
            _ = shutdown(fd.raw, Int32(SHUT_WR))
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
        // The descriptor closes when the last reference (this object) goes away.
    }
}
