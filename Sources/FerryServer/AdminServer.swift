#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem
import FerryWire
import Logging

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

    /// Counts what a session answered.
    func count(_ outcome: HTTPSession.Outcome) {
        for s in outcome.statuses { metrics.add(counters.requests(s)) }
        if outcome.malformed > 0 { metrics.add(counters.rejected, UInt64(outcome.malformed)) }
    }

    var routeFunction: HTTPSession.Route { route }

    func closed(_ c: HTTPConnection) { connections[ObjectIdentifier(c)] = nil }

    func close() {
        acceptor?.close(loop: loop)
        acceptor = nil
        for c in connections.values { c.close() }
        connections.removeAll()
    }
}
