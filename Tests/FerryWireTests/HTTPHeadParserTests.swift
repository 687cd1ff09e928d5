import Testing
import FerryCore
import FerryWire

@Suite struct HTTPHeadParsing {
    func parse(_ s: String, limits: HTTPHeadParser.Limits = .init()) -> HTTPHeadParser.Result {
        Array(s.utf8).withUnsafeBytes { HTTPHeadParser.parse($0, limits: limits) }
    }

    @Test func simpleGet() throws {
        let text = "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept:  text/plain \r\n\r\nrest"
        guard case .complete(let head, let used) = parse(text) else {
            Issue.record("not complete")
            return
        }
        #expect(head.method == "GET")
        #expect(head.path == "/metrics")
        #expect(head.header("accept") == "text/plain")
        #expect(head.keepAlive)
        #expect(used == text.utf8.count - "rest".utf8.count, "the head ends after the blank line")
    }

    @Test func incompleteUntilBlankLine() {
        #expect(parse("GET / HTTP/1.1\r\nHost: a\r\n") == .incomplete)
        #expect(parse("") == .incomplete)
    }

    @Test func connectionClose() throws {
        guard case .complete(let head, _) = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n") else {
            Issue.record("not complete")
            return
        }
        #expect(!head.keepAlive)
        guard case .complete(let h10, _) = parse("GET / HTTP/1.0\r\n\r\n") else {
            Issue.record("not complete")
            return
        }
        #expect(!h10.keepAlive)
    }

    @Test(arguments: [
        "GET /\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET nopath HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
        "GET / FTP/1.1\r\nHost: a\r\n\r\n",
        "\u{0}\u{1}\u{2}\r\n\r\n",
    ])
    func malformedIs400(_ text: String) {
        guard case .failure(let f) = parse(text) else {
            Issue.record("accepted: \(text.debugDescription)")
            return
        }
        #expect(f.status == 400)
    }

    @Test func unsupportedVersion() {
        #expect(parse("GET / HTTP/2.0\r\nHost: a\r\n\r\n") == .failure(.unsupportedVersion))
    }

    @Test func oversizedHeadIs431() {
        let big = "GET / HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "a", count: 9000) + "\r\n\r\n"
        #expect(parse(big) == .failure(.tooLarge))
        // Without the end in sight and past the limit: also 431, not "incomplete" forever.
        #expect(parse(String(repeating: "a", count: 8192)) == .failure(.tooLarge))
        let many = "GET / HTTP/1.1\r\nHost: a\r\n" + (0..<70).map { "X\($0): y\r\n" }.joined() + "\r\n"
        #expect(parse(many) == .failure(.tooLarge))
    }

    /// Random bytes, and random heads built from plausible pieces: whatever comes back must be
    /// consistent with the input (a complete head ends in CRLFCRLF within the buffer and parses
    /// the same again; incomplete means no end in sight; failures map to 400/431/505).
    @Test func randomInputGivesConsistentResults() {
        let seed = SplitMix64.testSeed()
        var rng = SplitMix64(seed: seed)
        let fields = ["Host: a", "Content-Length: 0", "Content-Length: 4", "Transfer-Encoding: chunked", "X:\ty", "Upgrade: websocket",
                      " folded", "NoColon", "Bad Name: v", "Connection: close"]
        var completes = 0
        for i in 0..<4000 {
            var bytes: [UInt8]
            if i % 2 == 0 {
                bytes = (0..<Int.random(in: 0..<300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if Bool.random(using: &rng) { bytes += Array("\r\n\r\n".utf8) }
            } else {
                let line = ["GET", "HEAD", "POST"].randomElement(using: &rng)! + " " + ["/", "/x?y", "*"].randomElement(using: &rng)! + " "
                    + ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0"].randomElement(using: &rng)!
                let head = ([line] + (0..<Int.random(in: 0..<5, using: &rng)).map { _ in fields.randomElement(using: &rng)! }).joined(separator: "\r\n")
                bytes = Array((head + "\r\n\r\n").utf8)
                if Bool.random(using: &rng) { bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            }
            let result = bytes.withUnsafeBytes { HTTPHeadParser.parse($0) }
            switch result {
            case .complete(let head, let consumed):
                completes += 1
                #expect(consumed <= bytes.count && Array(bytes[(consumed - 4)..<consumed]) == Array("\r\n\r\n".utf8),
                        "FERRY_TEST_SEED=\(seed) input \(bytes)")
                let again = Array(bytes[0..<consumed]).withUnsafeBytes { HTTPHeadParser.parse($0) }
                #expect(again == .complete(head, consumed: consumed), "FERRY_TEST_SEED=\(seed) input \(bytes)")
            case .incomplete:
                let hasEnd = bytes.count >= 4 && (0...(bytes.count - 4)).contains { Array(bytes[$0..<($0 + 4)]) == Array("\r\n\r\n".utf8) }
                #expect(!hasEnd && bytes.count < 8192, "FERRY_TEST_SEED=\(seed) input \(bytes)")
            case .failure(let f):
                #expect([400, 431, 505].contains(f.status), "FERRY_TEST_SEED=\(seed)")
            }
        }
        #expect(completes > 20, "the plausible pieces make some valid heads (FERRY_TEST_SEED=\(seed))")
    }

    @Test func responseEncoding() {
        let r = String(decoding: HTTPResponse.encode(status: 404, body: Array("no\n".utf8), close: true), as: UTF8.self)
        #expect(r == "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno\n")
        let h = String(decoding: HTTPResponse.encode(status: 200, body: Array("abc".utf8), close: false, headOnly: true), as: UTF8.self)
        #expect(h.hasSuffix("Content-Length: 3\r\n\r\n"))
    }
}

@Suite struct HTTPReasonPhrases {
    /// Every status the admin API and the HTTP paths answer has its phrase (no "401 Unknown").
    @Test(arguments: [200, 202, 400, 401, 403, 404, 405, 408, 409, 422, 426, 429, 431, 503, 505])
    func everyStatusWeSendHasItsPhrase(_ status: Int) {
        #expect(HTTPResponse.reasonPhrase(status) != "Unknown")
        let head = HTTPResponse.encode(status: status, body: [], close: true)
        #expect(String(decoding: head.prefix(while: { $0 != 13 }), as: UTF8.self) == "HTTP/1.1 \(status) \(HTTPResponse.reasonPhrase(status))")
    }
}
