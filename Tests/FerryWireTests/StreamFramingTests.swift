import Testing
import FerryCore
import FerryWire

@Suite struct StreamFramingTests {
    func next(_ bytes: [UInt8]) -> StreamFraming.Next { bytes.withUnsafeBytes { StreamFraming.next($0) } }

    @Test func stunMessagesBackToBack() {
        let a = STUNWriter.build(method: STUN.Method.binding, class: .request) { $0.append(STUN.Attribute.software, string: "x") }
        let b = STUNWriter.build(method: STUN.Method.binding, class: .request) { _ in }
        let stream = a + b
        #expect(next(stream) == .stun(length: a.count))
        #expect(next(Array(stream[a.count...])) == .stun(length: b.count))
        #expect(next(Array(a[0..<10])) == .incomplete)
        #expect(next(Array(a[0..<3])) == .incomplete)
    }

    @Test func channelDataIsPaddedOnStreams() {
        let msg: [UInt8] = [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]
        #expect(next(msg) == .channelData(channel: 0x4001, payload: 5, frameLength: 12))
        #expect(next(Array(msg[0..<9])) == .incomplete, "the padding belongs to the frame")
    }

    @Test func garbageCannotBeResynced() {
        #expect(next([0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0x00, 0x00]) == .invalid, "a TLS record has no cookie")
        // Mid-stream, HTTP looks like ChannelData on channel 0x4745 ("GE"): the frame bound decides.
        #expect(Array("GET / HTTP/1.1\r\n".utf8).withUnsafeBytes { StreamFraming.next($0, maxFrame: 2000) } == .invalid)
        #expect(next([0x00, 0x01, 0x00, 0x08, 1, 2, 3, 4]) == .invalid, "wrong cookie")
        #expect(next([0x00, 0x01, 0x00, 0x03, 0x21, 0x12, 0xA4, 0x42]) == .invalid, "length not a multiple of 4")
        #expect(next([0x40, 0x00, 0xFF, 0xFF]) == .incomplete, "the largest ChannelData fits the default bound")
        let big = [UInt8]([0x40, 0x00, 0xFF, 0xFF])
        #expect(big.withUnsafeBytes { StreamFraming.next($0, maxFrame: 2000) } == .invalid)
    }

    @Test func sniffing() {
        func s(_ b: [UInt8]) -> ProtocolSniffer.Kind? { b.withUnsafeBytes { ProtocolSniffer.sniff($0) } }
        #expect(s([0x16, 0x03, 0x01]) == .tls)
        #expect(s(Array("GET /".utf8)) == .http)
        #expect(s(STUNWriter.build(method: 1, class: .request) { _ in }) == .stun)
        #expect(s([0x00, 0x01, 0x00]) == nil)
        #expect(s([0x00, 0x01, 0x00, 0x00, 1, 2, 3, 4]) == .unknown)
        #expect(s([0xFF]) == .unknown)
        #expect(s([]) == nil)
    }
}

@Suite struct WebSocketFrames {
    @Test func maskedTextFrameRoundTrip() {
        var frame: [UInt8] = [0x81, 0x85, 1, 2, 3, 4]
        let text = Array("hello".utf8)
        let key: [UInt8] = [1, 2, 3, 4]
        frame += text.enumerated().map { $0.element ^ key[$0.offset & 3] }
        frame.withUnsafeMutableBytes { raw in
            guard case .frame(let f) = WebSocket.parse(UnsafeRawBufferPointer(raw), maxPayload: 100) else {
                Issue.record("not parsed")
                return
            }
            #expect(f.opcode == .text && f.fin && f.payloadLength == 5)
            let payload = UnsafeMutableRawBufferPointer(rebasing: raw[f.payloadStart..<f.frameLength])
            WebSocket.unmask(payload, key: f.maskKey!)
            #expect(Array(payload) == text)
        }
    }

    @Test func refusals() {
        func p(_ b: [UInt8], max: Int = 100) -> WebSocket.ParseResult { b.withUnsafeBytes { WebSocket.parse($0, maxPayload: max) } }
        #expect(p([0x81, 0x05, 0, 0, 0, 0, 0]) == .failure(.protocolError), "unmasked client frame")
        #expect(p([0xC1, 0x80, 0, 0, 0, 0]) == .failure(.protocolError), "RSV bit")
        #expect(p([0x83, 0x80, 0, 0, 0, 0]) == .failure(.protocolError), "reserved opcode")
        #expect(p([0x09, 0x80, 0, 0, 0, 0]) == .failure(.protocolError), "fragmented ping")
        #expect(p([0x81, 0xFE, 0x10, 0x00]) == .failure(.tooBig), "4096 > 100")
        #expect(p([0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0]) == .failure(.tooBig), "a 2^63 length")
        #expect(p([0x81]) == .incomplete)
    }

    /// Random bytes: a frame found must lie inside the buffer and within the payload limit, and
    /// a refusal must be one of the close codes RFC 6455 assigns to framing errors.
    @Test func randomBytesGiveConsistentResults() {
        let seed = SplitMix64.testSeed()
        var rng = SplitMix64(seed: seed)
        var frames = 0
        for _ in 0..<20_000 {
            var bytes = (0..<Int.random(in: 0..<40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if bytes.count > 2 && Bool.random(using: &rng) { bytes[1] = 0x80 | UInt8.random(in: 0...20, using: &rng) }  // masked, short
            switch bytes.withUnsafeBytes({ WebSocket.parse($0, maxPayload: 1000) }) {
            case .frame(let f):
                frames += 1
                #expect(f.frameLength <= bytes.count && f.payloadLength <= 1000 && f.payloadStart >= 2, "FERRY_TEST_SEED=\(seed) \(bytes)")
            case .incomplete:
                break
            case .failure(let code):
                #expect([.protocolError, .tooBig].contains(code), "FERRY_TEST_SEED=\(seed) \(bytes)")
            }
        }
        #expect(frames > 100, "FERRY_TEST_SEED=\(seed)")
    }
}
