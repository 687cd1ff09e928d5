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
    /// The admin endpoint's series (docs/metrics.md), registered here.
    struct Counters {
        private let byStatus: [Int: CounterID]
        private let otherStatus: CounterID
        let rejected: CounterID
        let refusedConnections: CounterID

        static let statuses = [200, 400, 404, 405, 408, 431, 503, 505]

        init(registering registry: some CounterRegistry) {
            let family = "ferry_admin_requests_total", help = "Admin HTTP requests answered, by status code."
            var byStatus: [Int: CounterID] = [:]
            for code in Counters.statuses { byStatus[code] = registry.counter(family, help, labels: [("code", "\(code)")]) }
            self.byStatus = byStatus
            otherStatus = registry.counter(family, help, labels: [("code", "other")])
            rejected = registry.counter("ferry_admin_malformed_requests_total",
                                        "Admin requests rejected as malformed or oversized (answered 400/408/431/505 and closed).")
            refusedConnections = registry.counter("ferry_admin_refused_connections_total",
                                                  "Admin connections closed at once because admin.max_connections were open.")
        }

        func requests(_ status: Int) -> CounterID { byStatus[status] ?? otherStatus }
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
            fd.close()
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
