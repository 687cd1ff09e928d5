#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem
import FerryWire
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

/// One TCP or TLS connection on a worker: sniffs what it carries (TLS, STUN, HTTP), runs the TLS
/// handshake, frames TURN messages (STUN and padded ChannelData) or serves HTTP, and writes
/// through a bounded queue. Relayed data beyond the bound is dropped and counted (`buffer_full`),
/// so a client that reads slowly cannot grow the server. Buffers are released when empty, so an
/// idle connection costs little more than its socket and TLS state.
///
/// Ownership: the worker's loop thread.
final class StreamConnection: EventHandler {
    enum Mode { case sniffing, handshaking, decided, turn, http, websocket }

    let id: ConnectionID
    let peer: SocketAddress
    let kind: StreamListener.Kind
    private let fd: FileDescriptor
    private unowned let worker: TURNWorker
    private unowned let loop: EventLoop
    private let settings: StreamSettings
    private var registration: Registration?
    private var tls: TLSSession?
    private(set) var mode: Mode
    private var input: [UInt8] = []
    /// What the socket is owed: plaintext, or TLS records (the session appends them here).
    private let output = OutputQueue()
    private var writeArmed = false
    /// The client sent its last byte (FIN or close_notify): what was read is answered, then close.
    private var inputDone = false
    private var closeAfterWrite = false
    /// What a close after the last write is counted as.
    private var closeReason = StreamCounters.Close.client
    private var http = HTTPSession()
    private(set) var lastActivity: UInt64
    let started: UInt64
    /// When the HTTP request head now arriving began (0: none is partly read).
    private(set) var requestStarted: UInt64 = 0
    private(set) var closed = false
    var dirty = false
    /// Largest frame: a STUN message or ChannelData of 64 KiB, plus its header.
    static let maxFrame = 4 + 65536
    static let readChunk = 16384

    init(id: ConnectionID, fd: FileDescriptor, peer: SocketAddress, kind: StreamListener.Kind, worker: TURNWorker, loop: EventLoop,
         settings: StreamSettings) throws(SystemError) {
        self.id = id
        self.fd = fd
        self.peer = peer
        self.kind = kind
        self.worker = worker
        self.loop = loop
        self.settings = settings
        lastActivity = loop.now
        started = loop.now
        mode = .sniffing
        registration = try loop.register(fd: fd.raw, events: Epoll.input | Epoll.readHangup, handler: self)
        if kind == .tls { startTLS() }
    }

    deinit {
        tls = nil  // before the queue its records go to
        output.deallocate()
    }

    var inHandshake: Bool { mode == .sniffing || mode == .handshaking || mode == .decided }

    func handleEvent(_ events: UInt32, loop: EventLoop) {
        if events & Epoll.output != 0 { flush() }
        guard !closed else { return }
        if events & (Epoll.input | Epoll.readHangup | Epoll.hangup | Epoll.error) != 0 {
            switch mode {
            case .sniffing: sniff()
            case .handshaking: handshake()
            case .decided, .turn, .http, .websocket: readAvailable()
            }
        }
    }

    // MARK: Sniffing and TLS

    private func sniff() {
        var peekBuffer = (UInt64(0), UInt64(0))
        let result = withUnsafeMutableBytes(of: &peekBuffer) { buf in Result { () throws(SystemError) in try Sockets.peek(fd.raw, into: buf) } }
        let n: Int
        switch result {
        case .failure: close(.client); return
        case .success(.wouldBlock): return
        case .success(.done(0)): close(.client); return
        case .success(.done(let got)): n = got
        }
        let kindSeen = withUnsafeBytes(of: &peekBuffer) { ProtocolSniffer.sniff(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        switch kindSeen {
        case nil:
            return  // wait for more bytes (the handshake timeout bounds the wait)
        case .tls?:
            startTLS()
        case .stun?:
            enter(.turn, protocolName: "turn")
            readAvailable()
        case .http?:
            enter(.http, protocolName: "http")
            readAvailable()
        case .unknown?:
            close(.protocolError)
        }
    }

    private func startTLS() {
        guard let contexts = settings.contexts, let session = contexts.session(fd: fd.raw, output: output) else {
            close(.tlsError)
            return
        }
        guard settings.handshakes.allow(peer.ip, now: loop.now) else {
            close(.rateLimited)
            return
        }
        tls = session
        mode = .handshaking
        handshake()
    }

    private func handshake() {
        guard let tls else { return }
        let progress = tls.handshake()
        // A flight (or an alert) the handshake queued leaves now.
        if output.count > 0 { flush() }
        guard !closed else { return }
        switch progress {
        case .done:
            worker.metrics.add(tls.version == "TLSv1.3" ? settings.counters.handshakesOK.tls13 : settings.counters.handshakesOK.tls12)
            setWriteInterest(false)
            // ALPN decides; without it, the first decrypted bytes do (read as TURN or HTTP).
            switch tls.alpn {
            case "http/1.1"?: enter(.http, protocolName: "https")
            case "stun.turn"?: enter(.turn, protocolName: "turns")
            default: mode = .decided
            }
            readAvailable()
        case .wantRead, .wantWrite:
            break  // more of the client's flight to come (writes never block: they go to `output`)
        case .closed:
            worker.metrics.add(settings.counters.handshakesFailed)
            close(.client)
        case .failed:
            worker.metrics.add(settings.counters.handshakesFailed)
            close(.tlsError)
        }
    }

    private func enter(_ m: Mode, protocolName: String) {
        mode = m
        if let c = settings.counters.protocols[protocolName] { worker.metrics.add(c) }
    }

    // MARK: Reading

    private func readAvailable() {
        let chunk = worker.streamReadBuffer
        // Records OpenSSL queued while reading (session tickets, alerts) leave with the next flush.
        defer { if !closed && output.count > 0 { markDirty() } }
        for _ in 0..<64 {
            guard !closed, !closeAfterWrite else { return }
            let n: Int
            if let tls {
                let (got, progress) = tls.read(into: chunk)
                switch progress {
                case .done: n = got
                case .wantRead, .wantWrite: return
                case .closed: endOfInput(); return
                case .failed: close(.tlsError); return
                }
            } else {
                switch Result(catching: { () throws(SystemError) in try Sockets.read(fd.raw, into: chunk) }) {
                case .failure: close(.client); return
                case .success(.wouldBlock): return
                case .success(.done(0)): endOfInput(); return
                case .success(.done(let got)): n = got
                }
            }
            lastActivity = loop.now
            input.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
            process()
            if closed { return }
            if input.count > StreamConnection.maxFrame + StreamConnection.readChunk {
                close(.protocolError)
                return
            }
        }
    }

    private func process() {
        if mode == .decided {
            // TLS without ALPN: the first decrypted bytes tell HTTP from TURN.
            switch input.withUnsafeBytes({ ProtocolSniffer.sniff($0) }) {
            case nil: return
            case .http?: enter(.http, protocolName: "https")
            case .stun?: enter(.turn, protocolName: "turns")
            default: close(.protocolError); return
            }
        }
        switch mode {
        case .turn: processTURN()
        case .http: processHTTP()
        case .websocket: processWebSocket()
        default: break
        }
    }

    /// Frames TURN messages (RFC 8656 §10.1, §12.5) and hands them to the worker's TURN server;
    /// relayed payloads are sent from the input buffer before it is compacted.
    private func processTURN() {
        var consumed = 0
        var invalid = false
        input.withUnsafeBytes { all in
            // Queued relay sends point into `input`: send them before the buffer can change.
            defer { worker.flushToPeers() }
            while consumed < all.count && !closed {
                let rest = UnsafeRawBufferPointer(rebasing: all[consumed...])
                switch StreamFraming.next(rest, maxFrame: StreamConnection.maxFrame) {
                case .incomplete:
                    return
                case .invalid:
                    invalid = true
                    return
                case .stun(let length):
                    worker.handleStreamSTUN(UnsafeRawBufferPointer(rebasing: rest[0..<length]), from: self)
                    consumed += length
                case .channelData(let channel, let payload, let frame):
                    worker.handleStreamChannelData(channel: channel, payload: rest.baseAddress! + 4, length: payload, from: self)
                    consumed += frame
                }
            }
        }
        guard !closed else { return }
        if consumed > 0 { input.removeFirst(consumed) }
        if input.isEmpty { input = [] }
        if invalid {
            worker.countMalformed()
            close(.protocolError)
        }
    }

    private func processHTTP() {
        // `GET /v1/signal` with an Upgrade becomes a signaling WebSocket.
        if let signal = settings.signal {
            let parsed = input.withUnsafeBytes { HTTPHeadParser.parse($0) }
            if case .complete(let head, let consumed) = parsed, head.path == "/v1/signal" {
                input.removeFirst(consumed)
                let answer: [UInt8]
                if tls == nil && !settings.allowPlaintextSignal {
                    answer = HTTPResponse.encode(status: 403, body: Array("signaling requires TLS (wss://)\n".utf8), close: true)
                } else {
                    switch WebSocket.accept(head) {
                    case .success(let response):
                        response.withUnsafeBytes { _ = enqueue($0, droppable: false) }
                        mode = .websocket
                        worker.metrics.add(settings.counters.websockets)
                        signal.opened(self)
                        if !input.isEmpty { processWebSocket() }
                        return
                    case .failure(let f):
                        answer = HTTPResponse.encode(status: f.status, body: Array((f.reason + "\n").utf8), close: true,
                                                     extraHeaders: f.headers.sorted { $0.key < $1.key })
                        if f.status == 400 { worker.metrics.add(settings.counters.httpMalformed) }
                    }
                }
                answer.withUnsafeBytes { _ = enqueue($0, droppable: false) }
                closeAfterFlush()
                return
            }
            if case .incomplete = parsed {
                if requestStarted == 0 { requestStarted = loop.now }
                return
            }
        }
        let bytes = input
        input = []
        let outcome = http.receive(bytes, route: settings.route)
        if !outcome.statuses.isEmpty { worker.metrics.add(settings.counters.httpRequests, UInt64(outcome.statuses.count)) }
        if outcome.malformed > 0 { worker.metrics.add(settings.counters.httpMalformed, UInt64(outcome.malformed)) }
        requestStarted = http.hasPartialRequest ? (requestStarted == 0 ? loop.now : requestStarted) : 0
        if !outcome.output.isEmpty {
            outcome.output.withUnsafeBytes { _ = enqueue($0, droppable: false) }
        }
        if http.closing {
            closeAfterFlush()
            flush()
        }
    }

    /// WebSocket frames (RFC 6455 §5): text messages go to the signaling session; fragments are
    /// joined up to the message limit; pings are answered; a close is echoed. Oversized frames or
    /// messages close with 1009, protocol errors with 1002, binary data with 1003.
    private var fragments: [UInt8] = []
    private var fragmenting = false

    private func processWebSocket() {
        var consumed = 0
        var failure: WebSocket.CloseCode?
        var messages: [[UInt8]] = []
        input.withUnsafeMutableBytes { all in
            while consumed < all.count && failure == nil && !closed {
                let rest = UnsafeMutableRawBufferPointer(rebasing: all[consumed...])
                switch WebSocket.parse(UnsafeRawBufferPointer(rest), maxPayload: settings.maxWebSocketMessage) {
                case .incomplete:
                    return
                case .failure(let code):
                    failure = code
                case .frame(let f):
                    let payload = UnsafeMutableRawBufferPointer(rebasing: rest[f.payloadStart..<f.frameLength])
                    if let key = f.maskKey { WebSocket.unmask(payload, key: key) }
                    consumed += f.frameLength
                    switch f.opcode {
                    case .ping:
                        let pong = WebSocket.encode(.pong, UnsafeRawBufferPointer(payload))
                        pong.withUnsafeBytes { _ = enqueue($0, droppable: false) }
                    case .pong:
                        break
                    case .close:
                        failure = .normal
                    case .binary:
                        failure = .unsupportedData
                    case .text, .continuation:
                        if f.opcode == .text && fragmenting { failure = .protocolError; break }
                        if f.opcode == .continuation && !fragmenting { failure = .protocolError; break }
                        fragments += UnsafeRawBufferPointer(payload)
                        if fragments.count > settings.maxWebSocketMessage { failure = .tooBig; break }
                        fragmenting = !f.fin
                        if f.fin {
                            // RFC 6455 §8.1: a text message that is not UTF-8 fails the connection (1007).
                            guard String(validating: fragments, as: UTF8.self) != nil else {
                                failure = .invalidPayload
                                break
                            }
                            messages.append(fragments)
                            fragments = []
                        }
                    }
                }
            }
        }
        guard !closed else { return }
        if consumed > 0 { input.removeFirst(consumed) }
        if input.isEmpty { input = [] }
        for m in messages where !closed { settings.signal?.text(m, from: self) }
        if let code = failure {
            if code != .normal { worker.metrics.add(settings.counters.websocketErrors) }
            let reason = code == .tooBig ? "message too big" : code == .invalidPayload ? "text is not UTF-8" : ""
            let frame = WebSocket.close(code, reason: reason)
            frame.withUnsafeBytes { _ = enqueue($0, droppable: false) }
            closeAfterFlush()
        }
    }

    /// The request head took longer than `stream.request_timeout_seconds`: 408, then close (a
    /// head sent a byte at a time would otherwise hold the connection past every timeout).
    func requestTimedOut() {
        guard !closed, !closeAfterWrite else { return }
        let outcome = http.timedOut()
        worker.metrics.add(settings.counters.httpMalformed)
        outcome.output.withUnsafeBytes { _ = enqueue($0, droppable: false) }
        closeReason = .requestTimeout
        closeAfterFlush()
    }

    // MARK: Writing

    /// Closes once everything queued has been written.
    func closeAfterFlush() {
        closeAfterWrite = true
        updateInterest()
        markDirty()
    }

    /// The client finished sending (FIN, or TLS close_notify or EOF): what it asked for before is
    /// already answered in `output`; write that (and our close_notify), then close.
    private func endOfInput() {
        inputDone = true
        tls?.shutdown()
        closeAfterWrite = true
        updateInterest()
        flush()
    }

    private func markDirty() {
        guard !dirty else { return }
        dirty = true
        worker.markDirty(self)
    }

    /// Queues bytes for the client (over TLS: encrypted now, one record per call, so each TURN
    /// message is a record of its own). Droppable data (relayed packets) is refused when the
    /// queue would pass `stream.write_buffer_bytes`; protocol answers are queued up to four times
    /// that, and a client that lets even those pile up (requests sent, answers never read) is
    /// closed.
    @discardableResult
    func enqueue(_ bytes: UnsafeRawBufferPointer, droppable: Bool) -> Bool {
        guard !closed else { return false }
        let pending = output.count + bytes.count
        if droppable && pending > settings.writeLimit { return false }
        if pending > 4 * settings.writeLimit {
            close(.slowReader)
            return false
        }
        if let tls {
            guard tls.write(bytes) == .done else {
                close(.tlsError)
                return false
            }
        } else if !output.append(bytes) {
            close(.slowReader)
            return false
        }
        markDirty()
        return true
    }

    /// Writes what is queued; called at the end of the loop iteration (so many relayed packets
    /// leave in one write) and when the socket becomes writable. A signaling peer's message
    /// queue refills the connection each time it drains, so a backlog leaves as fast as the
    /// socket takes it, never waiting for an unrelated wakeup.
    func flush() {
        dirty = false
        guard !closed else { return }
        while true {
            while output.count > 0 {
                switch Result(catching: { () throws(SystemError) in try Sockets.write(fd.raw, from: output.pending) }) {
                case .failure: close(.client); return
                case .success(.wouldBlock): setWriteInterest(true); return
                case .success(.done(let wrote)): output.consume(wrote)
                }
            }
            guard !closeAfterWrite, mode == .websocket, let signal = settings.signal, signal.refill(self) else { break }
        }
        setWriteInterest(false)
        if closeAfterWrite { close(closeReason) }
    }

    var queuedBytes: Int { output.count }

    private func setWriteInterest(_ on: Bool) {
        guard on != writeArmed else { return }
        writeArmed = on
        updateInterest()
    }

    /// Reads are wanted until the input ended or a close is pending (level-triggered epoll would
    /// otherwise report the same EOF or unread bytes forever); writes while bytes wait.
    private var interestArmed = Epoll.input | Epoll.readHangup

    private func updateInterest() {
        guard let registration else { return }
        let events = (inputDone || closeAfterWrite ? 0 : Epoll.input | Epoll.readHangup) | (writeArmed ? Epoll.output : 0)
        guard events != interestArmed else { return }
        interestArmed = events
        try? loop.modify(fd: fd.raw, registration, events: events)
    }

    // MARK: Closing

    func close(_ reason: StreamCounters.Close) {
        guard !closed else { return }
        closed = true
        if let registration { loop.deregister(fd: fd.raw, registration) }
        registration = nil
        if reason != .client && reason != .tlsError { tls?.shutdown() }
        // Best effort, one non-blocking write: a TLS alert or close_notify, or a last answer.
        if output.count > 0 { _ = try? Sockets.write(fd.raw, from: output.pending) }
        worker.metrics.add(settings.counters.closed[reason]!)
        worker.streamClosed(self)
        if mode == .websocket { settings.signal?.closed(self) }
        // `input` and `output` may be borrowed by the caller right now (close can happen inside
        // frame processing): they go with the object, which the worker just dropped.
        tls = nil
        fd.close()
    }
}

/// A listening TCP socket on one worker. With its own SO_REUSEPORT socket per worker the kernel
/// spreads connections; a single socket passed by systemd is shared by all workers with
/// EPOLLEXCLUSIVE, so one worker wakes per connection.
final class StreamListener: EventHandler {
    enum Kind: String, CaseIterable {
        /// Sniffs: TLS, STUN or HTTP by the first bytes.
        case tcp
        /// TLS first.
        case tls
    }

    private let fd: FileDescriptor
    let kind: Kind
    private unowned let worker: TURNWorker
    private var registration: Registration?

    init(fd: FileDescriptor, kind: Kind, shared: Bool, worker: TURNWorker, loop: EventLoop) throws(SystemError) {
        self.fd = fd
        self.kind = kind
        self.worker = worker
        registration = try loop.register(fd: fd.raw, events: Epoll.input | (shared ? Epoll.exclusive : 0), handler: self)
    }

    func handleEvent(_ events: UInt32, loop: EventLoop) {
        for _ in 0..<64 {
            switch Result(catching: { () throws(SystemError) in try Sockets.accept(fd.raw) }) {
            case .success(.wouldBlock):
                return
            case .success(.done(let (raw, peer))):
                worker.accepted(FileDescriptor(raw), peer: peer, kind: kind)
            case .failure:
                // EMFILE and friends: try again on the next wakeup rather than spin.
                return
            }
        }
    }

    func close(loop: EventLoop) {
        if let registration { loop.deregister(fd: fd.raw, registration) }
        registration = nil
    }
}
