import FerryCore
import FerrySystem
import FerryTURN
import FerryTLS

/// Settings every stream connection on a worker shares (static after start, but `contexts`,
/// which a reload swaps on the worker's thread).
final class StreamSettings {
    var contexts: TLSContextSet?
    let idleTimeout: UInt64
    let handshakeTimeout: UInt64
    /// An HTTP request head must be complete this long after its first byte (else 408).
    let requestTimeout: UInt64
    let writeLimit: Int
    let maxConnections: Int
    /// Open connections one source IP may hold on this worker.
    let maxPerSource: Int
    let route: HTTPSession.Route
    let counters: StreamCounters
    var handshakes: RateLimiter<IPAddress>
    /// TURN over TCP and TLS on this worker (nil when no TURN listener is configured).
    var turn: StreamFrameHandler?
    /// The native relay's stream side: a TURN-sniffed stream whose first message is a FERRY-BIND.
    var relay: RelayStreamSide?
    /// Signaling on this worker (nil when `[signal]` is off), and whether plain ws:// is allowed.
    var signal: SignalWorker?
    var allowPlaintextSignal = false
    var maxWebSocketMessage = 65536

    init(contexts: TLSContextSet?, idleTimeoutSeconds: Int, handshakeTimeoutSeconds: Int, requestTimeoutSeconds: Int, writeLimit: Int,
         maxConnections: Int, maxPerSource: Int, handshakesPerSecond: Int, handshakeBurst: Int, route: @escaping HTTPSession.Route,
         counters: StreamCounters) {
        self.contexts = contexts
        idleTimeout = UInt64(idleTimeoutSeconds) * 1_000_000_000
        handshakeTimeout = UInt64(handshakeTimeoutSeconds) * 1_000_000_000
        requestTimeout = UInt64(requestTimeoutSeconds) * 1_000_000_000
        self.writeLimit = writeLimit
        self.maxConnections = maxConnections
        self.maxPerSource = maxPerSource
        self.route = route
        self.counters = counters
        handshakes = RateLimiter(ratePerSecond: Double(handshakesPerSecond), burst: Double(handshakeBurst))
    }

    var timeouts: StreamConnectionStateMachine.Timeouts {
        .init(idle: idleTimeout, handshake: handshakeTimeout, request: requestTimeout)
    }
}

/// Counters of the stream transports, registered here with their names (docs/metrics.md).
struct StreamCounters {
    enum Close: Int, CounterReason {
        case client, idleTimeout, handshakeTimeout, protocolError, tlsError, limit, sourceLimit, rateLimited, shutdown,
             slowReader, requestTimeout

        var label: String {
            switch self {
            case .client: "client"
            case .idleTimeout: "idle_timeout"
            case .handshakeTimeout: "handshake_timeout"
            case .protocolError: "protocol_error"
            case .tlsError: "tls_error"
            case .limit: "limit"
            case .sourceLimit: "source_limit"
            case .rateLimited: "rate_limited"
            case .shutdown: "shutdown"
            case .slowReader: "slow_reader"
            case .requestTimeout: "request_timeout"
            }
        }
    }

    let accepted: [StreamListener.Kind: CounterID]
    let active: [StreamListener.Kind: CounterID]
    let closed: ReasonCounters<Close>
    let handshakesOK: (tls12: CounterID, tls13: CounterID)
    let handshakesFailed: CounterID
    let protocols: [String: CounterID]
    let http: HTTPCounters
    let websockets: CounterID
    let websocketErrors: CounterID
    /// accept() failures by reason (`ferry_listener_accept_errors_total`), labelled by listener.
    let acceptErrors: ReasonCounters<StreamListener.AcceptError>
    /// Connections turned away at `maxConnections` (the admin endpoint's own series), besides
    /// `closed[.limit]`.
    let refused: CounterID?

    /// The counters of the stream listeners (TURN over TCP/TLS, HTTPS, signaling).
    init(registering registry: some CounterRegistry) {
        self.init(registry, family: "ferry_connections", what: "Stream connections", kinds: [.tcp, .tls],
                  protocols: ["turn", "turns", "http", "https"],
                  http: HTTPCounters(requests: registry.counter("ferry_https_requests_total",
                                                                "HTTP requests served on stream listeners (health; signaling next)."),
                                     malformed: registry.counter("ferry_https_malformed_requests_total",
                                                                 "HTTP requests on stream listeners refused as malformed (answered 400/408/431/505 and closed).")),
                  refused: nil)
    }

    /// The admin endpoint's connections: the same life, their own series, so scrapes never mix
    /// into the relay's connection counts.
    init(registeringAdmin registry: some CounterRegistry, http: HTTPCounters, refused: CounterID) {
        self.init(registry, family: "ferry_admin_connections", what: "Admin connections", kinds: [.http], protocols: [],
                  http: http, refused: refused)
    }

    private init(_ registry: some CounterRegistry, family: String, what: String, kinds: [StreamListener.Kind], protocols names: [String],
                 http: HTTPCounters, refused: CounterID?) {
        var accepted: [StreamListener.Kind: CounterID] = [:]
        var active: [StreamListener.Kind: CounterID] = [:]
        for k in kinds {
            accepted[k] = registry.counter("\(family)_accepted_total", "\(what) accepted, by listener transport.",
                                           labels: [("transport", k.rawValue)])
            active[k] = registry.gauge("\(family)_active", "\(what) open now, by listener transport.",
                                       labels: [("transport", k.rawValue)])
        }
        self.accepted = accepted
        self.active = active
        closed = ReasonCounters { _, label in
            registry.counter("\(family)_closed_total", "\(what) closed (or refused), by reason.", labels: [("reason", label)])
        }
        var protocols: [String: CounterID] = [:]
        for p in names {
            protocols[p] = registry.counter("\(family)_protocol_total",
                                            "\(what) by what they carried: turn (TCP), turns (TLS), http, https.", labels: [("protocol", p)])
        }
        self.protocols = protocols
        self.http = http
        self.refused = refused
        let listener = family == "ferry_admin_connections" ? "admin" : "stream"
        acceptErrors = ReasonCounters { _, label in
            registry.counter("ferry_listener_accept_errors_total",
                             "accept() failures on TCP listeners, by listener and reason; on fd_limit and no_memory the listener pauses (10 ms doubling to 1 s).",
                             labels: [("listener", listener), ("reason", label)])
        }
        let hs = "TLS handshakes, by result and version."
        handshakesOK = (registry.counter("ferry_tls_handshakes_total", hs, labels: [("result", "ok"), ("version", "TLSv1.2")]),
                        registry.counter("ferry_tls_handshakes_total", hs, labels: [("result", "ok"), ("version", "TLSv1.3")]))
        handshakesFailed = registry.counter("ferry_tls_handshakes_total", hs, labels: [("result", "failed"), ("version", "none")])
        websockets = registry.counter("ferry_websocket_upgrades_total", "WebSocket connections opened on /v1/signal.")
        websocketErrors = registry.counter("ferry_websocket_errors_total",
                                           "WebSocket connections closed for a protocol error, an oversized message (1009) or binary data.")
    }
}

/// Where a connection's HTTP requests are counted: one series for all answers (HTTPS on stream
/// listeners) or one per status code (the admin endpoint), and the malformed ones.
struct HTTPCounters {
    private let byStatus: [Int: CounterID]
    private let other: CounterID
    let malformed: CounterID

    init(requests: CounterID, malformed: CounterID) {
        byStatus = [:]
        other = requests
        self.malformed = malformed
    }

    init(byStatus: [Int: CounterID], other: CounterID, malformed: CounterID) {
        self.byStatus = byStatus
        self.other = other
        self.malformed = malformed
    }

    func requests(_ status: Int) -> CounterID { byStatus[status] ?? other }

    func count(_ outcome: HTTPSession.Outcome, in metrics: CounterBlock) {
        for s in outcome.statuses { metrics.add(requests(s)) }
        if outcome.malformed > 0 { metrics.add(malformed, UInt64(outcome.malformed)) }
    }
}

/// A protocol framed on stream connections once sniffed (TURN over TCP and TLS): the connection
/// hands it its unread input, one call per read rather than per frame.
protocol StreamFrameHandler: AnyObject {
    /// Consumes the whole frames at the front of `input`; returns the bytes used, or nil for a
    /// framing error (the connection closes as a protocol error). Anything it sends from `input`
    /// must be sent before it returns.
    func consume(_ input: UnsafeRawBufferPointer, from conn: StreamConnection) -> Int?
    /// The connection closed: forget the client's state.
    func connectionClosed(_ conn: StreamConnection)
}
