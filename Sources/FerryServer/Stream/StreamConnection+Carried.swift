import FerryCore
import FerrySystem
import FerryWire
import FerryTLS

/// What a stream connection carries once it serves HTTP or a WebSocket (TURN frames go to the
/// worker's `StreamFrameHandler` in StreamConnection.swift).
extension StreamConnection {
    func processHTTP() {
        // `GET /v1/signal` with an Upgrade becomes a signaling WebSocket.
        if let signal = settings.signal {
            let parsed = input.withUnreadBytes { HTTPHeadParser.parse($0) }
            if case .complete(let head, let consumed) = parsed, head.path == "/v1/signal" {
                input.consume(consumed)
                state.requestHead(partial: false, now: loop.now)
                let answer: [UInt8]
                if tls == nil && !settings.allowPlaintextSignal {
                    answer = HTTPResponse.encode(status: 403, body: Array("signaling requires TLS (wss://)\n".utf8), close: true)
                } else {
                    switch WebSocket.accept(head) {
                    case .success(let response):
                        response.withUnsafeBytes { _ = enqueue($0, droppable: false) }
                        state.upgradedToWebSocket()
                        worker.metrics.add(settings.counters.websockets)
                        signal.opened(self)
                        if !input.isEmpty { processWebSocket() }
                        return
                    case .failure(let f):
                        answer = HTTPResponse.encode(status: f.status, body: Array((f.reason + "\n").utf8), close: true,
                                                     extraHeaders: f.headers.sorted { $0.key < $1.key })
                        if f.status == 400 { worker.metrics.add(settings.counters.http.malformed) }
                    }
                }
                answer.withUnsafeBytes { _ = enqueue($0, droppable: false) }
                closeAfterFlush()
                return
            }
            if case .incomplete = parsed {
                state.requestHead(partial: true, now: loop.now)
                return
            }
        }
        let bytes = input.unread
        input.removeAll()
        answerHTTP(bytes)
    }

    /// HTTP requests answered per connection per turn of the loop, and how much a connection may
    /// have buffered unanswered before its reads pause: a client pipelining thousands of requests
    /// (HEAD /, say) gets `httpRequestsPerTurn` answers, then every other connection of the loop
    /// has its turn (the admin port's /healthz, the watchdog ping), then it gets more. Its socket
    /// is not read while the backlog is over `httpBacklogBytes`, so the backlog is bounded.
    static let httpRequestsPerTurn = 8
    static let httpBacklogBytes = 16384

    /// Answers what `bytes` (and the backlog) hold, up to this turn's share; schedules the next
    /// share for the next turn of the loop when requests are left.
    func answerHTTP(_ bytes: [UInt8]) {
        let outcome = http.receive(bytes, route: settings.route, limit: StreamConnection.httpRequestsPerTurn)
        settings.counters.http.count(outcome, in: worker.metrics)
        state.requestHead(partial: http.hasPartialRequest, now: loop.now)
        if !outcome.output.isEmpty {
            outcome.output.withUnsafeBytes { _ = enqueue($0, droppable: false) }
        }
        if http.closing {
            closeAfterFlush()
            flush()
            return
        }
        httpReadsPaused = http.bufferedBytes > StreamConnection.httpBacklogBytes
        updateInterest()
        if http.bufferedBytes > 0 && !httpTurnScheduled {
            httpTurnScheduled = true
            // The next turn, after this iteration's other events: the rest of the backlog.
            _ = loop.schedule(after: 0) { [self] in
                httpTurnScheduled = false
                guard !state.isClosed, case .serving(.http) = state.phase else { return }
                answerHTTP([])
                markDirty()
            }
        }
    }

    /// WebSocket frames (RFC 6455 §5): text messages go to the signaling session; fragments are
    /// joined up to the message limit; pings are answered; a close is echoed. Oversized frames or
    /// messages close with 1009, protocol errors with 1002, binary data with 1003.
    func processWebSocket() {
        var consumed = 0
        var failure: WebSocket.CloseCode?
        var messages: [[UInt8]] = []
        let maxMessage = settings.maxWebSocketMessage
        input.withUnreadMutableBytes { all in
            while consumed < all.count && failure == nil {
                let rest = UnsafeMutableRawBufferPointer(rebasing: all[consumed...])
                switch WebSocket.parse(UnsafeRawBufferPointer(rest), maxPayload: maxMessage) {
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
                        if fragments.count > maxMessage { failure = .tooBig; break }
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
        guard !state.isClosed else { return }
        input.consume(consumed)
        for m in messages where !state.isClosed { settings.signal?.text(m, from: self) }
        if let code = failure, !state.isClosed {
            if code != .normal { worker.metrics.add(settings.counters.websocketErrors) }
            let reason = code == .tooBig ? "message too big" : code == .invalidPayload ? "text is not UTF-8" : ""
            let frame = WebSocket.close(code, reason: reason)
            frame.withUnsafeBytes { _ = enqueue($0, droppable: false) }
            closeAfterFlush()
        }
    }

    // MARK: Writing

    /// Closes once everything queued has been written.
}
