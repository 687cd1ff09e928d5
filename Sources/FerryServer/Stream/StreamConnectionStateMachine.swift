import FerryWire

/// The life of one stream connection as a pure state machine, in the shape of hummingbird's
/// `HTTPConnectionStateHandler`: each event returns its own action enum and the I/O shell
/// (`StreamConnection`) only switches on it. No syscalls, no clock: times are handed in.
///
///     sniffing ──tls──▶ handshaking ──ALPN──▶ serving(turn | http)
///        │                   └──no ALPN──▶ awaitingProtocol ──first bytes──▶ serving(turn | http)
///        └──stun / http──▶ serving(turn | http) ──/v1/signal upgrade──▶ serving(websocket)
///     (an HTTP-only listener, the admin endpoint, starts in serving(http))
///     any ──end of input / close after flush──▶ closing(reason) ──written──▶ closed
///     HTTP with input still open: closing ──written──▶ lingering ──EOF / 2 s──▶ closed
///     any ──error, timeout──▶ closed
struct StreamConnectionStateMachine {
    enum Carried: Equatable {
        case turn, http, websocket
    }

    enum Phase: Equatable {
        /// Plain TCP, nothing read yet: the first bytes tell TLS, STUN or HTTP apart.
        case sniffing
        case handshaking
        /// TLS is up without ALPN: the first decrypted bytes decide between TURN and HTTP.
        case awaitingProtocol
        case serving(Carried)
        /// What is queued is written, then the connection closes for `reason`. Input is no longer
        /// read (level-triggered epoll would report the same EOF or unread bytes forever).
        case closing(StreamCounters.Close, carrying: Carried?)
        /// HTTP's last answer is written and our side shut (FIN); what the client still sends is
        /// read and discarded until it closes or `lingerTime` passes, so the kernel does not
        /// reset the connection (destroying the answer) over unread bytes.
        case lingering(StreamCounters.Close, since: UInt64)
        case closed
    }

    /// How a connection begins: sniffing (a plain TCP listener), TLS (a TLS listener), or HTTP
    /// (an HTTP-only listener such as the admin endpoint).
    enum Start: Equatable { case sniff, tls, http }

    static let lingerTime: UInt64 = 2_000_000_000

    struct Timeouts: Equatable {
        /// Nanoseconds: `stream.idle_timeout_seconds`, `tls.handshake_timeout_seconds`,
        /// `stream.request_timeout_seconds`.
        var idle: UInt64
        var handshake: UInt64
        var request: UInt64
    }

    private(set) var phase: Phase
    let timeouts: Timeouts
    let started: UInt64
    private(set) var lastActivity: UInt64
    /// When the HTTP request head now arriving began (nil: none is partly read).
    private(set) var requestStarted: UInt64?
    /// The client sent its last byte (FIN or close_notify).
    private(set) var inputDone = false
    /// Writes wait for the socket (EPOLLOUT wanted).
    private(set) var writeBlocked = false

    init(start: Start, now: UInt64, timeouts: Timeouts) {
        switch start {
        case .sniff: phase = .sniffing
        case .tls: phase = .handshaking
        case .http: phase = .serving(.http)
        }
        self.timeouts = timeouts
        started = now
        lastActivity = now
    }

    var isClosed: Bool { phase == .closed }
    /// Closing, lingering or closed: nothing more is read for processing.
    var isWindingDown: Bool {
        switch phase {
        case .closing, .lingering, .closed: return true
        default: return false
        }
    }
    /// Why a pending close will close (closing or lingering).
    var pendingCloseReason: StreamCounters.Close? {
        switch phase {
        case .closing(let r, _), .lingering(let r, _): return r
        default: return nil
        }
    }
    var inHandshake: Bool { phase == .sniffing || phase == .handshaking || phase == .awaitingProtocol }
    var carried: Carried? {
        switch phase {
        case .serving(let c): return c
        case .closing(_, let c): return c
        case .lingering: return .http
        default: return nil
        }
    }

    /// The epoll interest the shell should have: reads while input may still come and no close
    /// is pending; writes while bytes wait for the socket.
    var wantsRead: Bool {
        if case .lingering = phase { return !inputDone }
        return !inputDone && !isWindingDown
    }
    var wantsWrite: Bool { writeBlocked && !isClosed }

    // MARK: Events

    enum ReadableAction: Equatable {
        /// Peek at the first bytes (plain TCP, undecided).
        case sniff
        /// Drive the TLS handshake.
        case handshake
        /// Read application bytes (decrypted over TLS).
        case read
        /// Read and throw away (lingering).
        case discard
        case ignore
    }

    /// The socket is readable (or hung up).
    func readable() -> ReadableAction {
        switch phase {
        case .sniffing: return .sniff
        case .handshaking: return .handshake
        case .awaitingProtocol, .serving: return .read
        case .lingering: return .discard
        case .closing, .closed: return .ignore
        }
    }

    enum SniffAction: Equatable {
        /// Not enough bytes yet (the handshake timeout bounds the wait).
        case wait
        case startTLS
        /// Count the protocol under `name` and read what it carries.
        case serve(Carried, name: String)
        /// Not a protocol served here: close (the `close` event) for the reason.
        case close(StreamCounters.Close)
    }

    /// The first bytes of a plain connection (or, with `decrypted`, of a TLS one without ALPN).
    mutating func sniffed(_ kind: ProtocolSniffer.Kind?, decrypted: Bool = false) -> SniffAction {
        guard phase == (decrypted ? .awaitingProtocol : .sniffing) else { return .wait }
        switch kind {
        case nil:
            return .wait
        case .tls? where !decrypted:
            phase = .handshaking
            return .startTLS
        case .stun?:
            phase = .serving(.turn)
            return .serve(.turn, name: decrypted ? "turns" : "turn")
        case .http?:
            phase = .serving(.http)
            return .serve(.http, name: decrypted ? "https" : "http")
        case .tls?, .unknown?:
            return .close(.protocolError)
        }
    }

    enum HandshakeProgress: Equatable {
        case done(alpn: String?)
        case inProgress
        /// The peer went away during the handshake.
        case peerClosed
        case failed
    }

    enum HandshakeAction: Equatable {
        case wait
        /// Count a successful handshake; then `serve` (nil: wait for the first decrypted bytes).
        case established(serve: Carried?, name: String?)
        /// Count a failed handshake and close for the reason.
        case failed(StreamCounters.Close)
    }

    mutating func handshake(_ progress: HandshakeProgress) -> HandshakeAction {
        guard phase == .handshaking else { return .wait }
        switch progress {
        case .inProgress:
            return .wait
        case .done(let alpn):
            // ALPN decides; without it, the first decrypted bytes do.
            switch alpn {
            case "http/1.1"?:
                phase = .serving(.http)
                return .established(serve: .http, name: "https")
            case "stun.turn"?:
                phase = .serving(.turn)
                return .established(serve: .turn, name: "turns")
            default:
                phase = .awaitingProtocol
                return .established(serve: nil, name: nil)
            }
        case .peerClosed:
            _ = close(.client)
            return .failed(.client)
        case .failed:
            _ = close(.tlsError)
            return .failed(.tlsError)
        }
    }

    /// Bytes arrived at `now`: the connection is not idle.
    mutating func received(now: UInt64) { lastActivity = now }

    /// An HTTP request head is partly read (starts its clock once) or none is (`false`).
    mutating func requestHead(partial: Bool, now: UInt64) {
        if partial {
            if requestStarted == nil { requestStarted = now }
        } else {
            requestStarted = nil
        }
    }

    /// `GET /v1/signal` was accepted: the connection now carries WebSocket frames.
    mutating func upgradedToWebSocket() {
        if phase == .serving(.http) { phase = .serving(.websocket) }
    }

    enum EndOfInputAction: Equatable {
        /// Send TLS close_notify (if any) and write what is queued; close after that.
        case shutdownAndFlush
        /// A lingering connection's client closed: close now.
        case close(StreamCounters.Close)
        case ignore
    }

    /// The client finished sending: what it asked for before is answered, then close.
    mutating func endOfInput() -> EndOfInputAction {
        guard !isClosed else { return .ignore }
        inputDone = true
        if case .lingering(let reason, _) = phase { return .close(reason) }
        if case .closing = phase { return .shutdownAndFlush }
        phase = .closing(.client, carrying: carried)
        return .shutdownAndFlush
    }

    /// Close once everything queued is written (an error answered, a close frame sent).
    mutating func closeAfterFlush(_ reason: StreamCounters.Close = .client) {
        switch phase {
        case .closing, .lingering, .closed: return
        default: phase = .closing(reason, carrying: carried)
        }
    }

    enum FlushAction: Equatable {
        /// Wait for EPOLLOUT.
        case waitWritable
        /// Everything is written; nothing more to do.
        case idle
        /// Everything is written and a close was pending: close (the `close` event) now.
        case close(StreamCounters.Close)
        /// HTTP's last answer is written while the client may still send: shut our side (FIN),
        /// keep reading to discard.
        case linger
    }

    /// A write pass ended at `now`: with bytes still queued (`blocked`) or all written.
    mutating func flushed(blocked: Bool, now: UInt64 = 0) -> FlushAction {
        writeBlocked = blocked
        if blocked { return .waitWritable }
        if case .closing(let reason, let carrying) = phase {
            if carrying == .http && !inputDone {
                phase = .lingering(reason, since: now)
                return .linger
            }
            return .close(reason)
        }
        return .idle
    }

    enum TimeoutAction: Equatable {
        case none
        /// Answer 408 and close after it is written.
        case requestTimeout
        case close(StreamCounters.Close)
    }

    /// The once-a-second sweep: which deadline, if any, has passed.
    mutating func tick(now: UInt64) -> TimeoutAction {
        if isClosed { return .none }
        if case .lingering(let reason, let since) = phase {
            return now &- since >= StreamConnectionStateMachine.lingerTime ? .close(reason) : .none
        }
        if inHandshake && now &- started > timeouts.handshake { return .close(.handshakeTimeout) }
        if case .closing = phase {
            // A pending close still owes bytes: the idle timeout bounds a reader that never reads.
            return now &- lastActivity > timeouts.idle ? .close(.idleTimeout) : .none
        }
        if let begun = requestStarted, now &- begun > timeouts.request {
            requestStarted = nil
            phase = .closing(.requestTimeout, carrying: carried)
            return .requestTimeout
        }
        if now &- lastActivity > timeouts.idle { return .close(.idleTimeout) }
        return .none
    }

    enum CloseAction: Equatable {
        /// Deregister, send close_notify unless the peer left or TLS failed, count `reason`.
        case close(StreamCounters.Close)
        case alreadyClosed
    }

    mutating func close(_ reason: StreamCounters.Close) -> CloseAction {
        guard !isClosed else { return .alreadyClosed }
        phase = .closed
        return .close(reason)
    }
}
