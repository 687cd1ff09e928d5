import Testing
@testable import FerryServer

/// The connection's life with a fake clock: every event and the action it returns.
@Suite struct StreamConnectionStateMachineTests {
    typealias SM = StreamConnectionStateMachine
    static let second: UInt64 = 1_000_000_000
    static let timeouts = SM.Timeouts(idle: 300 * second, handshake: 10 * second, request: 15 * second)
    let t0: UInt64 = 1_000 * second

    func plain() -> SM { SM(start: .sniff, now: t0, timeouts: Self.timeouts) }

    @Test func plainConnectionSniffsThenServesWhatItSees() {
        var sm = plain()
        #expect(sm.readable() == .sniff)
        #expect(sm.sniffed(nil) == .wait)
        #expect(sm.phase == .sniffing)
        #expect(sm.sniffed(.stun) == .serve(.turn, name: "turn"))
        #expect(sm.phase == .serving(.turn))
        #expect(sm.readable() == .read)

        var http = plain()
        #expect(http.sniffed(.http) == .serve(.http, name: "http"))
        #expect(http.carried == .http)
    }

    @Test func unknownBytesCloseAsProtocolErrorAndTheCloseEventDoesTheIO() {
        var sm = plain()
        #expect(sm.sniffed(.unknown) == .close(.protocolError))
        #expect(!sm.isClosed, "the shell's close event closes, so its I/O runs once")
        #expect(sm.close(.protocolError) == .close(.protocolError))
        #expect(sm.close(.client) == .alreadyClosed)
        #expect(sm.readable() == .ignore)
    }

    @Test func tlsSniffedStartsTheHandshakeAndALPNDecides() {
        var sm = plain()
        #expect(sm.sniffed(.tls) == .startTLS)
        #expect(sm.readable() == .handshake)
        #expect(sm.handshake(.inProgress) == .wait)
        #expect(sm.handshake(.done(alpn: "stun.turn")) == .established(serve: .turn, name: "turns"))
        #expect(sm.phase == .serving(.turn))

        var web = SM(start: .tls, now: t0, timeouts: Self.timeouts)
        #expect(web.readable() == .handshake)
        #expect(web.handshake(.done(alpn: "http/1.1")) == .established(serve: .http, name: "https"))
    }

    @Test func tlsWithoutALPNWaitsForTheFirstDecryptedBytes() {
        var sm = SM(start: .tls, now: t0, timeouts: Self.timeouts)
        #expect(sm.handshake(.done(alpn: nil)) == .established(serve: nil, name: nil))
        #expect(sm.phase == .awaitingProtocol)
        #expect(sm.inHandshake, "the handshake timeout still applies until the protocol is known")
        #expect(sm.sniffed(nil, decrypted: true) == .wait)
        #expect(sm.sniffed(.http, decrypted: true) == .serve(.http, name: "https"))
        var tunnel = SM(start: .tls, now: t0, timeouts: Self.timeouts)
        _ = tunnel.handshake(.done(alpn: nil))
        #expect(tunnel.sniffed(.tls, decrypted: true) == .close(.protocolError), "TLS inside TLS is not served")
    }

    @Test func handshakeFailuresCloseWithTheirReason() {
        var failed = SM(start: .tls, now: t0, timeouts: Self.timeouts)
        #expect(failed.handshake(.failed) == .failed(.tlsError))
        #expect(failed.isClosed)
        var gone = SM(start: .tls, now: t0, timeouts: Self.timeouts)
        #expect(gone.handshake(.peerClosed) == .failed(.client))
    }

    @Test func handshakeTimeoutCountsFromAcceptEvenWithActivity() {
        var sm = SM(start: .tls, now: t0, timeouts: Self.timeouts)
        sm.received(now: t0 + 9 * Self.second)
        #expect(sm.tick(now: t0 + 10 * Self.second) == .none)
        #expect(sm.tick(now: t0 + 11 * Self.second) == .close(.handshakeTimeout))
    }

    @Test func idleTimeoutCountsFromTheLastByte() {
        var sm = plain()
        _ = sm.sniffed(.stun)
        sm.received(now: t0 + 100 * Self.second)
        #expect(sm.tick(now: t0 + 400 * Self.second) == .none)
        #expect(sm.tick(now: t0 + 401 * Self.second) == .close(.idleTimeout))
    }

    @Test func anUnfinishedRequestHeadTimesOutOnceThenClosesAfterTheAnswer() {
        var sm = plain()
        _ = sm.sniffed(.http)
        sm.requestHead(partial: true, now: t0)
        sm.requestHead(partial: true, now: t0 + 10 * Self.second)  // the clock starts at the first byte
        #expect(sm.tick(now: t0 + 15 * Self.second) == .none)
        #expect(sm.tick(now: t0 + 16 * Self.second) == .requestTimeout)
        #expect(sm.phase == .closing(.requestTimeout, carrying: .http))
        #expect(!sm.wantsRead)
        #expect(sm.tick(now: t0 + 17 * Self.second) == .none, "408 is answered once")
        #expect(sm.flushed(blocked: false, now: t0 + 17 * Self.second) == .linger)
        #expect(sm.tick(now: t0 + 19 * Self.second) == .close(.requestTimeout))
    }

    @Test func aCompletedHeadStopsTheRequestClock() {
        var sm = plain()
        _ = sm.sniffed(.http)
        sm.requestHead(partial: true, now: t0)
        sm.requestHead(partial: false, now: t0 + Self.second)
        #expect(sm.tick(now: t0 + 60 * Self.second) == .none)
    }

    @Test func anHTTPOnlyListenerServesHTTPFromTheStart() {
        var sm = SM(start: .http, now: t0, timeouts: Self.timeouts)
        #expect(sm.phase == .serving(.http) && sm.readable() == .read && !sm.inHandshake)
        #expect(sm.tick(now: t0 + 11 * Self.second) == .none, "no handshake to time out")
    }

    @Test func httpLingersAfterItsLastAnswerUntilTheClientCloses() {
        var sm = plain()
        _ = sm.sniffed(.http)
        sm.closeAfterFlush()
        #expect(sm.flushed(blocked: false, now: t0) == .linger, "our FIN, then unread bytes are discarded, not reset")
        #expect(sm.wantsRead && sm.readable() == .discard)
        #expect(sm.tick(now: t0 + Self.second) == .none)
        #expect(sm.endOfInput() == .close(.client))
        var slow = plain()
        _ = slow.sniffed(.http)
        slow.closeAfterFlush(.protocolError)
        _ = slow.flushed(blocked: false, now: t0)
        #expect(slow.tick(now: t0 + 2 * Self.second) == .close(.protocolError), "the linger ends after two seconds")
    }

    @Test func endOfInputAnswersWhatWasAskedThenCloses() {
        var sm = plain()
        _ = sm.sniffed(.http)
        #expect(sm.endOfInput() == .shutdownAndFlush)
        #expect(!sm.wantsRead, "EOF is not read again (level-triggered epoll)")
        #expect(sm.readable() == .ignore)
        #expect(sm.flushed(blocked: true) == .waitWritable)
        #expect(sm.wantsWrite)
        #expect(sm.flushed(blocked: false) == .close(.client))
    }

    @Test func closeAfterFlushKeepsTheFirstReason() {
        var sm = plain()
        _ = sm.sniffed(.http)
        sm.upgradedToWebSocket()
        #expect(sm.carried == .websocket)
        sm.closeAfterFlush(.slowReader)
        sm.closeAfterFlush(.client)
        #expect(sm.endOfInput() == .shutdownAndFlush)
        #expect(sm.flushed(blocked: false) == .close(.slowReader))
        #expect(sm.carried == .websocket, "the shell tells signaling when a WebSocket closes")
    }

    @Test func writesBlockedAndUnblocked() {
        var sm = plain()
        _ = sm.sniffed(.stun)
        #expect(sm.flushed(blocked: true) == .waitWritable)
        #expect(sm.wantsRead && sm.wantsWrite)
        #expect(sm.flushed(blocked: false) == .idle)
        #expect(!sm.wantsWrite)
    }

    @Test func aPendingCloseThatNeverDrainsEndsAtTheIdleTimeout() {
        var sm = plain()
        _ = sm.sniffed(.http)
        sm.closeAfterFlush()
        _ = sm.flushed(blocked: true)
        #expect(sm.tick(now: t0 + 301 * Self.second) == .close(.idleTimeout))
    }
}

@Suite struct InputBufferTests {
    @Test func consumesByOffsetAndCompactsOnlyWhenAppending() {
        var b = InputBuffer()
        let bytes: [UInt8] = Array(0..<100)
        bytes.withUnsafeBytes { b.append($0) }
        b.consume(30)
        #expect(b.count == 70)
        #expect(b.withUnreadBytes { $0.first } == 30)
        bytes.withUnsafeBytes { b.append(UnsafeRawBufferPointer(rebasing: $0[0..<10])) }
        #expect(b.count == 80)
        #expect(b.unread == Array(30..<100) + Array(0..<10))
        b.withUnreadMutableBytes { $0[0] = 255 }
        #expect(b.unread.first == 255)
        b.consume(80)
        #expect(b.isEmpty)
    }

    @Test func emptyAfterConsumingEverything() {
        var b = InputBuffer()
        let three: [UInt8] = [1, 2, 3]
        three.withUnsafeBytes { b.append($0) }
        b.consume(3)
        #expect(b.isEmpty && b.unread == [])
    }
}

@Suite struct DatagramDemuxTests {
    @Test func routesByFirstByteAsRFC7983() throws {
        var d = DatagramDemux()
        try d.claim(DatagramDemux.Range.stun, route: 1)
        try d.claim(DatagramDemux.Range.channelData, route: 1)
        try d.claim(DatagramDemux.Range.nativeRelay, route: 2)
        #expect(d.route(0) == 1 && d.route(3) == 1)
        #expect(d.route(0x40) == 1 && d.route(0x7F) == 1)
        #expect(d.route(0xC0) == 2 && d.route(0xFF) == 2)
        #expect(d.route(4) == DatagramDemux.unclaimed)
        #expect(d.route(20) == DatagramDemux.unclaimed, "DTLS is not served")
        d.fallback(1)
        #expect(d.route(4) == 1 && d.route(0x80) == 1)
        #expect(d.route(0xC0) == 2, "a fallback never takes a claimed byte")
    }

    @Test func overlappingClaimsAreRefused() throws {
        var d = DatagramDemux()
        try d.claim(0...3, route: 1)
        #expect(throws: DatagramDemux.Overlap.self) { try d.claim(3...5, route: 2) }
    }
}
