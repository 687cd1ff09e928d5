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

/// Counters of the stream transports (docs/metrics.md).
struct StreamCounters {
    enum Close: String, CaseIterable {
        case client, idleTimeout = "idle_timeout", handshakeTimeout = "handshake_timeout",
             protocolError = "protocol_error", tlsError = "tls_error", limit, sourceLimit = "source_limit",
             rateLimited = "rate_limited", shutdown, slowReader = "slow_reader", requestTimeout = "request_timeout"
    }

    let accepted: [StreamListener.Kind: CounterID]
    let active: [StreamListener.Kind: CounterID]
    let closed: [Close: CounterID]
    let handshakesOK: (tls12: CounterID, tls13: CounterID)
    let handshakesFailed: CounterID
    let protocols: [String: CounterID]
    let httpRequests: CounterID
    let httpMalformed: CounterID
    let websockets: CounterID
    let websocketErrors: CounterID
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
