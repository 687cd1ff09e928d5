import FerryCore
import FerrySystem
import FerryWire
import FerryTLS

/// One TCP or TLS connection on a worker: the I/O shell around `StreamConnectionStateMachine`.
/// It peeks, reads, runs TLS and writes; the state machine decides what each event means
/// (sniff, handshake, serve, close, time out). What it carries is served by others: TURN frames
/// by the worker's `StreamFrameHandler`, HTTP by `HTTPSession`, WebSocket messages by signaling.
/// Writes go through a bounded queue: relayed data beyond the bound is dropped and counted
/// (`buffer_full`), so a client that reads slowly cannot grow the server. Buffers are released
/// when empty, so an idle connection costs little more than its socket and TLS state.
///
/// Ownership: the worker's loop thread. Static after construction: `id`, `peer`, `kind`, `fd`,
/// `settings` (whose `contexts` a reload swaps on this thread).
final class StreamConnection: EventHandler {
    let id: ConnectionID
    let peer: SocketAddress
    let kind: StreamListener.Kind
    private let fd: FileDescriptor
    unowned let worker: Worker
    unowned let loop: EventLoop
    let settings: StreamSettings
    private var registration: Registration?
    var tls: TLSSession?
    var state: StreamConnectionStateMachine
    var input = InputBuffer()
    /// What the socket is owed: plaintext, or TLS records (the session appends them here).
    private let output = OutputQueue()
    /// The epoll events registered now.
    private var interestArmed = Epoll.input | Epoll.readHangup
    var http = HTTPSession()
    /// HTTP pacing (StreamConnection+Carried): reads pause while the unanswered backlog is over
    /// its bound, and one deferred turn is scheduled at a time.
    var httpReadsPaused = false
    var httpTurnScheduled = false
    /// A WebSocket message arriving in fragments (RFC 6455 §5.4).
    var fragments: [UInt8] = []
    var fragmenting = false
    /// Queued for the end-of-iteration flush.
    var dirty = false
    /// A TURN-sniffed stream is the native relay's when its first message is a FERRY-BIND
    /// (nil until two bytes tell).
    private var relayEnd: Bool?
    var isTLS: Bool { tls != nil }
    /// Why it closed, once it has (for the session log).
    private(set) var closeReason: StreamCounters.Close?
    /// Largest frame: a STUN message or ChannelData of 64 KiB, plus its header.
    static let maxFrame = 4 + 65536
    static let readChunk = 16384

    var closed: Bool { state.isClosed }
    /// When the connection was accepted (monotonic nanoseconds).
    var started: UInt64 { state.started }
    var carried: StreamConnectionStateMachine.Carried? { state.carried }

    init(id: ConnectionID, fd: FileDescriptor, peer: SocketAddress, kind: StreamListener.Kind, worker: Worker, loop: EventLoop,
         settings: StreamSettings) throws(SystemError) {
        self.id = id
        self.fd = fd
        self.peer = peer
        self.kind = kind
        self.worker = worker
        self.loop = loop
        self.settings = settings
        let start: StreamConnectionStateMachine.Start = switch kind {
        case .tcp: .sniff
        case .tls: .tls
        case .http: .http
        }
        state = StreamConnectionStateMachine(start: start, now: loop.now, timeouts: settings.timeouts)
        registration = try loop.register(fd: fd.raw, events: Epoll.input | Epoll.readHangup, handler: self)
        if kind == .tls { startTLS() }
    }

    deinit {
        tls = nil  // before the queue its records go to
        output.deallocate()
    }

    func handleEvent(_ events: UInt32, loop: EventLoop) {
        if events & Epoll.output != 0 { flush() }
        guard events & (Epoll.input | Epoll.readHangup | Epoll.hangup | Epoll.error) != 0 else { return }
        switch state.readable() {
        case .sniff: sniff()
        case .handshake: handshake()
        case .read: readAvailable()
        case .discard: discardInput()
        case .ignore: break
        }
    }

    /// The sweep's tick: the state machine says which deadline passed.
    func tick(now: UInt64) {
        switch state.tick(now: now) {
        case .none:
            break
        case .requestTimeout:
            // 408, then close: a head sent a byte at a time would otherwise hold the connection
            // past every timeout.
            let outcome = http.timedOut()
            settings.counters.http.count(outcome, in: worker.metrics)
            outcome.output.withUnsafeBytes { _ = enqueue($0, droppable: false) }
            updateInterest()
            markDirty()
        case .close(let reason):
            close(reason)
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
        let seen = withUnsafeBytes(of: &peekBuffer) { ProtocolSniffer.sniff(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        switch state.sniffed(seen) {
        case .wait:
            break
        case .startTLS:
            startTLS()
        case .serve(let carried, let name):
            if serve(carried, name: name) { readAvailable() }
        case .close(let reason):
            close(reason)
        }
    }

    /// Counts what the connection turned out to carry; false (and closed) when nothing here
    /// serves it (TURN on a port of a server without a TURN listener).
    private func serve(_ carried: StreamConnectionStateMachine.Carried?, name: String?) -> Bool {
        if let name { count(protocol: name) }
        guard carried != .turn || settings.turn != nil else {
            close(.protocolError)
            return false
        }
        return true
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
        handshake()
    }

    private func handshake() {
        guard let tls else { return }
        let progress: StreamConnectionStateMachine.HandshakeProgress
        switch tls.handshake() {
        case .done: progress = .done(alpn: tls.alpn)
        case .wantRead, .wantWrite: progress = .inProgress  // writes never block: they go to `output`
        case .closed: progress = .peerClosed
        case .failed: progress = .failed
        }
        // A flight (or an alert) the handshake queued leaves now.
        if output.count > 0 { flush() }
        switch state.handshake(progress) {
        case .wait:
            break
        case .established(let serve, let name):
            worker.metrics.add(tls.version == "TLSv1.3" ? settings.counters.handshakesOK.tls13 : settings.counters.handshakesOK.tls12)
            guard self.serve(serve, name: name), !state.isClosed else { return }
            readAvailable()
        case .failed(let reason):
            worker.metrics.add(settings.counters.handshakesFailed)
            finishClose(reason, carried: nil)
        }
    }

    private func count(protocol name: String) {
        if let c = settings.counters.protocols[name] { worker.metrics.add(c) }
    }

    // MARK: Reading

    private func readAvailable() {
        let chunk = worker.streamReadBuffer
        // Records OpenSSL queued while reading (session tickets, alerts) leave with the next flush.
        defer { if !state.isClosed && output.count > 0 { markDirty() } }
        for _ in 0..<64 {
            guard !state.isWindingDown, !httpReadsPaused else { return }
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
            state.received(now: loop.now)
            input.append(UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
            process()
            if state.isClosed { return }
            if input.count > StreamConnection.maxFrame + StreamConnection.readChunk {
                close(.protocolError)
                return
            }
        }
    }

    private func process() {
        if state.phase == .awaitingProtocol {
            // TLS without ALPN: the first decrypted bytes tell HTTP from TURN.
            let seen = input.withUnreadBytes { ProtocolSniffer.sniff($0) }
            switch state.sniffed(seen, decrypted: true) {
            case .wait:
                return
            case .serve(let carried, let name):
                guard serve(carried, name: name) else { return }
            case .startTLS, .close:
                close(.protocolError)
                return
            }
        }
        switch state.phase {
        case .serving(.turn): processTURN()
        case .serving(.http): processHTTP()
        case .serving(.websocket): processWebSocket()
        default: break
        }
    }

    /// TURN frames go to the worker's TURN service, which sends what it relays before returning;
    /// a native-relay stream end's go to the relay's stream side.
    private func processTURN() {
        guard let turn = settings.turn else { return }
        if relayEnd == nil, let relay = settings.relay {
            relayEnd = input.withUnreadBytes { RelayStreamSide.claims($0) }
            if relayEnd == true { relay.opened(self) }
        }
        let used: Int?
        if relayEnd == true, let relay = settings.relay {
            used = input.withUnreadBytes { relay.consume($0, from: self) }
        } else {
            if relayEnd == nil && settings.relay != nil { return }
            used = input.withUnreadBytes { turn.consume($0, from: self) }
        }
        guard !state.isClosed else { return }
        guard let used else {
            close(.protocolError)
            return
        }
        input.consume(used)
    }

    func closeAfterFlush() {
        state.closeAfterFlush()
        updateInterest()
        markDirty()
    }

    /// After HTTP's last answer: what the client still sends is read and thrown away until it
    /// closes (or the linger time passes, at the sweep).
    private func discardInput() {
        let chunk = worker.streamReadBuffer
        while !state.isClosed {
            switch Result(catching: { () throws(SystemError) in try Sockets.read(fd.raw, into: chunk) }) {
            case .success(.wouldBlock): return
            case .success(.done(let n)) where n > 0: continue
            case .success(.done): endOfInput()
            case .failure: close(.client)
            }
        }
    }

    /// The client finished sending (FIN, or TLS close_notify or EOF): what it asked for before is
    /// already answered in `output`; write that (and our close_notify), then close.
    private func endOfInput() {
        switch state.endOfInput() {
        case .ignore:
            return
        case .close(let reason):
            close(reason)
        case .shutdownAndFlush:
            tls?.shutdown()
            updateInterest()
            flush()
        }
    }

    func markDirty() {
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
        guard !state.isClosed else { return false }
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
        guard !state.isClosed else { return }
        var blocked = false
        writing: while true {
            while output.count > 0 {
                switch Result(catching: { () throws(SystemError) in try Sockets.write(fd.raw, from: output.pending) }) {
                case .failure: close(.client); return
                case .success(.wouldBlock): blocked = true; break writing
                case .success(.done(let wrote)): output.consume(wrote)
                }
            }
            guard !state.isWindingDown, state.carried == .websocket, let signal = settings.signal, signal.refill(self) else { break }
        }
        let action = state.flushed(blocked: blocked, now: loop.now)
        switch action {
        case .waitWritable, .idle:
            updateInterest()
        case .close(let reason):
            close(reason)
        case .linger:
            // Plain HTTP only: over TLS the session's close_notify is the end (closed as before).
            if tls != nil {
                close(state.pendingCloseReason ?? .client)
                return
            }
            Sockets.shutdownWrite(fd.raw)
            updateInterest()
            discardInput()
        }
    }

    var queuedBytes: Int { output.count }

    func updateInterest() {
        guard let registration, !state.isClosed else { return }
        let events = (state.wantsRead && !httpReadsPaused ? Epoll.input | Epoll.readHangup : 0) | (state.wantsWrite ? Epoll.output : 0)
        guard events != interestArmed else { return }
        interestArmed = events
        try? loop.modify(fd: fd.raw, registration, events: events)
    }

    // MARK: Closing

    func close(_ reason: StreamCounters.Close) {
        let carried = state.carried
        switch state.close(reason) {
        case .alreadyClosed: return
        case .close(let reason): finishClose(reason, carried: carried)
        }
    }

    /// The I/O of a close the state machine already decided.
    private func finishClose(_ reason: StreamCounters.Close, carried: StreamConnectionStateMachine.Carried?) {
        closeReason = reason
        if let registration { loop.deregister(fd: fd.raw, registration) }
        registration = nil
        if reason != .client && reason != .tlsError { tls?.shutdown() }
        // Best effort, one non-blocking write: a TLS alert or close_notify, or a last answer.
        if output.count > 0 { _ = try? Sockets.write(fd.raw, from: output.pending) }
        worker.metrics.add(settings.counters.closed[reason])
        // The service learns of the close while the worker still knows the connection (the
        // session log names its transport), then the worker drops it.
        switch carried {
        case .turn? where relayEnd == true: settings.relay?.connectionClosed(self)
        case .turn?: settings.turn?.connectionClosed(self)
        case .websocket?: settings.signal?.closed(self)
        case .http?, nil: break
        }
        worker.streamClosed(self)
        // `input` and `output` may be borrowed by the caller right now (close can happen inside
        // frame processing): they go with the object, which the worker just dropped.
        tls = nil
        fd.close()
    }
}
