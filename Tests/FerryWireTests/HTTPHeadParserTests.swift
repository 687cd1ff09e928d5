import Testing
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

    @Test func randomBytesNeverTrap() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let n = Int.random(in: 0..<300, using: &rng)
            var bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if Bool.random(using: &rng) { bytes += Array("\r\n\r\n".utf8) }
            _ = bytes.withUnsafeBytes { HTTPHeadParser.parse($0) }
        }
    }

    @Test func responseEncoding() {
        let r = String(decoding: HTTPResponse.encode(status: 404, body: Array("no\n".utf8), close: true), as: UTF8.self)
        #expect(r == "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno\n")
        let h = String(decoding: HTTPResponse.encode(status: 200, body: Array("abc".utf8), close: false, headOnly: true), as: UTF8.self)
        #expect(h.hasSuffix("Content-Length: 3\r\n\r\n"))
    }
}
