import FerryWire

/// An answer from a route.
struct HTTPAnswer {
    var status: Int
    var contentType = "text/plain; charset=utf-8"
    var body: [UInt8]
    var headers: [(String, String)] = []

    init(status: Int, contentType: String = "text/plain; charset=utf-8", body: String, headers: [(String, String)] = []) {
        self.status = status
        self.contentType = contentType
        self.body = Array(body.utf8)
        self.headers = headers
    }
}

/// HTTP/1.1 request handling over any byte stream (the plain admin endpoint, HTTPS on a shared
/// TLS port): bytes in, response bytes out, and whether to close. Requests only (the route checks the method),
/// no bodies. The transport owns timeouts and writing.
struct HTTPSession {
    typealias Route = (HTTPRequestHead) -> HTTPAnswer

    private var input: [UInt8] = []
    private(set) var closing = false
    private let limits = HTTPHeadParser.Limits()

    /// Request heads seen, answered with a status (for counting), and failures (400/408/431/505).
    struct Outcome {
        var output: [UInt8] = []
        var statuses: [Int] = []
        var malformed = 0
    }

    var hasPartialRequest: Bool { !input.isEmpty }
    /// Bytes received and not yet answered (pipelined requests wait here for their turn).
    var bufferedBytes: Int { input.count }

    /// Answers at most `limit` of the requests received so far; the rest wait in `input` for the
    /// next call (the transport calls again on its next turn: a pipelined flood on one connection
    /// takes a bounded share of the loop, behind every other connection).
    mutating func receive(_ bytes: some Collection<UInt8>, route: Route, limit: Int = .max) -> Outcome {
        var out = Outcome()
        guard !closing else { return out }
        input.append(contentsOf: bytes)
        var answered = 0
        while !input.isEmpty && !closing && answered < limit {
            let parsed = input.withUnsafeBytes { HTTPHeadParser.parse($0, limits: limits) }
            switch parsed {
            case .incomplete:
                return out
            case .failure(let failure):
                fail(failure.status, &out)
            case .complete(let head, let consumed):
                input.removeFirst(consumed)
                answered += 1
                let answer = HTTPSession.answer(head, route: route)
                out.statuses.append(answer.status)
                if answer.status == 400 { out.malformed += 1 }
                // A body is never read: a request that came with one closes the connection, so
                // its bytes are never taken for the next request, whatever the route answered.
                let keep = head.keepAlive && answer.status < 400 && HTTPSession.bodyRefusal(head) == nil
                out.output += HTTPResponse.encode(status: answer.status, contentType: answer.contentType, body: answer.body,
                                                  close: !keep, headOnly: head.method == "HEAD", extraHeaders: answer.headers)
                if !keep { closing = true }
            }
        }
        return out
    }

    /// A request that did not complete in time.
    mutating func timedOut() -> Outcome {
        var out = Outcome()
        fail(408, &out)
        return out
    }

    private mutating func fail(_ status: Int, _ out: inout Outcome) {
        out.malformed += 1
        input.removeAll()
        closing = true
        out.output += HTTPResponse.encode(status: status, body: Array("\(status) \(HTTPResponse.reasonPhrase(status))\n".utf8), close: true)
    }

    /// Methods are the route's to check (the admin API takes POST for its control endpoints), and
    /// so, for other methods, is the body: a route checks the method first (405), then
    /// `bodyRefusal` (400), then acts.
    static func answer(_ head: HTTPRequestHead, route: Route) -> HTTPAnswer {
        if head.method != "GET" && head.method != "HEAD" { return route(head) }
        if let refusal = bodyRefusal(head) { return refusal }
        return route(head)
    }

    /// 400 for a request with a body (none is read).
    static func bodyRefusal(_ head: HTTPRequestHead) -> HTTPAnswer? {
        if let cl = head.header("Content-Length"), cl != "0" {
            return HTTPAnswer(status: 400, body: "request bodies are not accepted\n")
        }
        if head.header("Transfer-Encoding") != nil {
            return HTTPAnswer(status: 400, body: "request bodies are not accepted\n")
        }
        return nil
    }
}
