import FerryCore
import FerrySystem
import FerryWire

/// The admin endpoint: `/metrics`, `/healthz`, `/readyz` over HTTP/1.1 with keep-alive. It runs
/// on the control thread's loop, apart from the workers, so a scrape never delays a packet and
/// a flood of relayed traffic never hides the server's health. Its connections are the same
/// `StreamConnection`s as every stream listener's (an HTTP-only listener on a `Worker` of the
/// control loop), counted in series of their own.
final class AdminServer {
    /// The admin endpoint's series (docs/metrics.md), registered here.
    struct Counters {
        let requests: HTTPCounters
        let refusedConnections: CounterID
        let connections: StreamCounters

        static let statuses = [200, 202, 400, 401, 403, 404, 405, 408, 409, 422, 431, 503, 505]

        init(registering registry: some CounterRegistry) {
            let family = "ferry_admin_requests_total", help = "Admin HTTP requests answered, by status code."
            var byStatus: [Int: CounterID] = [:]
            for code in Counters.statuses { byStatus[code] = registry.counter(family, help, labels: [("code", "\(code)")]) }
            requests = HTTPCounters(byStatus: byStatus, other: registry.counter(family, help, labels: [("code", "other")]),
                                    malformed: registry.counter("ferry_admin_malformed_requests_total",
                                                                "Admin requests rejected as malformed or oversized (answered 400/408/431/505 and closed)."))
            refusedConnections = registry.counter("ferry_admin_refused_connections_total",
                                                  "Admin connections closed at once because admin.max_connections (or admin.max_connections_per_source from that address) were open.")
            connections = StreamCounters(registeringAdmin: registry, http: requests, refused: refusedConnections)
        }
    }

    /// An answer to /metrics can be large; it is a protocol answer, so it may queue up to four
    /// times this before a client that never reads is closed.
    static let writeLimit = 1 << 20

    /// Owned by the control loop.
    private let worker: Worker
    let address: SocketAddress?

    init(fd: FileDescriptor, loop: EventLoop, metrics: CounterBlock, maxConnections: Int, maxPerSource: Int, timeoutSeconds: Int,
         counters: Counters, route: @escaping HTTPSession.Route) throws(SystemError) {
        address = try? Sockets.localAddress(fd.raw)
        worker = Worker(loop: loop, metrics: metrics, batchSize: 1, maxDatagram: 64)
        // One timeout for everything: a request head must be complete, and an idle keep-alive
        // connection closes, after admin.request_timeout_seconds.
        worker.configureStreams(StreamSettings(
            contexts: nil, idleTimeoutSeconds: timeoutSeconds, handshakeTimeoutSeconds: timeoutSeconds,
            requestTimeoutSeconds: timeoutSeconds, writeLimit: AdminServer.writeLimit, maxConnections: maxConnections,
            maxPerSource: maxPerSource, handshakesPerSecond: 0, handshakeBurst: 0, route: route, counters: counters.connections))
        try worker.addStreamListener(fd: fd, kind: .http, shared: false)
    }

    func close() { worker.close() }
}
