/// An HTTP/1.1 request head (RFC 9112 §2–§5), parsed strictly: what the admin endpoint and,
/// later, the HTTPS and WebSocket listeners accept. Hand-written because it is small, has no
/// allocation beyond the result, and must never trap on hostile bytes.
public struct HTTPRequestHead: Equatable, Sendable {
    public var method: String
    public var target: String
    public var version: String
    /// Header fields in order, names as sent.
    public var headers: [(name: String, value: String)]

    public static func == (a: Self, b: Self) -> Bool {
        a.method == b.method && a.target == b.target && a.version == b.version
            && a.headers.elementsEqual(b.headers, by: { $0.name == $1.name && $0.value == $1.value })
    }

    /// The first value of a header, by case-insensitive name.
    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.name.lowercased() == lower }?.value
    }

    /// The path part of the target, without the query.
    public var path: Substring { target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "" }

    /// HTTP/1.1 keeps the connection open unless told to close; HTTP/1.0 closes unless told to keep it.
    public var keepAlive: Bool {
        let connection = header("Connection")?.lowercased() ?? ""
        return version == "HTTP/1.1" ? !connection.contains("close") : connection.contains("keep-alive")
    }
}

/// Parses request heads from a byte buffer.
public enum HTTPHeadParser {
    public struct Limits: Sendable {
        public var maxHeadBytes: Int
        public var maxHeaders: Int
        public init(maxHeadBytes: Int = 8192, maxHeaders: Int = 64) {
            self.maxHeadBytes = maxHeadBytes
            self.maxHeaders = maxHeaders
        }
    }

    public enum Failure: Error, Equatable, Sendable {
        /// Malformed: answer 400.
        case badRequest(String)
        /// Head or a field too large, or too many fields: answer 431.
        case tooLarge
        /// Not HTTP/1.x: answer 505.
        case unsupportedVersion

        public var status: Int {
            switch self {
            case .badRequest: return 400
            case .tooLarge: return 431
            case .unsupportedVersion: return 505
            }
        }
    }

    public enum Result: Equatable, Sendable {
        /// More bytes are needed.
        case incomplete
        /// A head, and how many bytes of the buffer it used.
        case complete(HTTPRequestHead, consumed: Int)
        case failure(Failure)
    }

    public static func parse(_ bytes: UnsafeRawBufferPointer, limits: Limits = .init()) -> Result {
        // Find the blank line ending the head.
        guard let end = findHeadEnd(bytes, limit: limits.maxHeadBytes) else {
            // Fail early on what can never become a valid head, rather than waiting for more.
            let n = min(bytes.count, limits.maxHeadBytes)
            for i in 0..<n where bytes[i] == 0x0A && (i == 0 || bytes[i - 1] != 0x0D) {
                return .failure(.badRequest("bare LF"))
            }
            return bytes.count >= limits.maxHeadBytes ? .failure(.tooLarge) : .incomplete
        }
        let head = UnsafeRawBufferPointer(rebasing: bytes[0..<end])
        var lines: [UnsafeRawBufferPointer] = []
        var start = 0
        var i = 0
        while i < head.count {
            if head[i] == 0x0D {
                guard i + 1 < head.count, head[i + 1] == 0x0A else { return .failure(.badRequest("bare CR")) }
                lines.append(UnsafeRawBufferPointer(rebasing: head[start..<i]))
                i += 2
                start = i
            } else if head[i] == 0x0A {
                return .failure(.badRequest("bare LF"))
            } else if head[i] == 0 {
                return .failure(.badRequest("NUL in head"))
            } else {
                i += 1
            }
        }
        if start < head.count { lines.append(UnsafeRawBufferPointer(rebasing: head[start..<head.count])) }
        guard let requestLine = lines.first else { return .failure(.badRequest("empty request line")) }
        let parts = requestLine.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3 else { return .failure(.badRequest("request line must be METHOD SP TARGET SP VERSION")) }
        let method = String(decoding: parts[0], as: UTF8.self)
        let target = String(decoding: parts[1], as: UTF8.self)
        let version = String(decoding: parts[2], as: UTF8.self)
        guard !method.isEmpty, parts[0].allSatisfy(isTokenChar) else { return .failure(.badRequest("bad method")) }
        guard target.hasPrefix("/") || target == "*", parts[1].allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            return .failure(.badRequest("bad request target"))
        }
        guard version.hasPrefix("HTTP/") else { return .failure(.badRequest("bad HTTP version")) }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else { return .failure(.unsupportedVersion) }
        var headers: [(name: String, value: String)] = []
        for line in lines.dropFirst() {
            if line.first == 0x20 || line.first == 0x09 { return .failure(.badRequest("obsolete line folding")) }
            guard let colon = line.firstIndex(of: 0x3A), colon > 0 else { return .failure(.badRequest("header without name")) }
            let name = line[line.startIndex..<colon]
            guard name.allSatisfy(isTokenChar) else { return .failure(.badRequest("bad header name")) }
            var value = line[(colon + 1)...]
            while let f = value.first, f == 0x20 || f == 0x09 { value = value.dropFirst() }
            while let l = value.last, l == 0x20 || l == 0x09 { value = value.dropLast() }
            guard value.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                return .failure(.badRequest("control character in header value"))
            }
            headers.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
            if headers.count > limits.maxHeaders { return .failure(.tooLarge) }
        }
        let request = HTTPRequestHead(method: method, target: target, version: version, headers: headers)
        if version == "HTTP/1.1" && request.header("Host") == nil { return .failure(.badRequest("missing Host")) }
        // RFC 9112 §6.3: framing that two parties could read differently (the shape of request
        // smuggling) is an unrecoverable error: 400 and close.
        let lengths = headers.filter { $0.name.lowercased() == "content-length" }
        if request.header("Transfer-Encoding") != nil, !lengths.isEmpty {
            return .failure(.badRequest("both Transfer-Encoding and Content-Length"))
        }
        if lengths.count > 1 { return .failure(.badRequest("more than one Content-Length")) }
        if let cl = lengths.first?.value, cl.isEmpty || cl.utf8.count > 18 || !cl.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
            return .failure(.badRequest("bad Content-Length"))
        }
        return .complete(request, consumed: end + 4)
    }

    /// Index of the CRLFCRLF that ends the head (the head's length), within `limit` bytes.
    static func findHeadEnd(_ bytes: UnsafeRawBufferPointer, limit: Int) -> Int? {
        let n = min(bytes.count, limit)
        guard n >= 4 else { return nil }
        for i in 0...(n - 4) where bytes[i] == 0x0D && bytes[i + 1] == 0x0A && bytes[i + 2] == 0x0D && bytes[i + 3] == 0x0A {
            return i
        }
        return nil
    }

    /// RFC 9110 §5.6.2 token characters.
    static func isTokenChar(_ c: UInt8) -> Bool {
        switch c {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
             UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default: return false
        }
    }
}

/// Builds a simple HTTP/1.1 response.
public enum HTTPResponse {
    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 101: return "Switching Protocols"
        case 200: return "OK"
        case 202: return "Accepted"
        case 204: return "No Content"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 413: return "Content Too Large"
        case 422: return "Unprocessable Content"
        case 426: return "Upgrade Required"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 503: return "Service Unavailable"
        case 505: return "HTTP Version Not Supported"
        default: return "Unknown"
        }
    }

    public static func encode(status: Int, contentType: String = "text/plain; charset=utf-8", body: [UInt8],
                              close: Bool, headOnly: Bool = false, extraHeaders: [(String, String)] = []) -> [UInt8] {
        var head = "HTTP/1.1 \(status) \(reasonPhrase(status))\r\n"
        head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        for (k, v) in extraHeaders { head += "\(k): \(v)\r\n" }
        if close { head += "Connection: close\r\n" }
        head += "\r\n"
        return Array(head.utf8) + (headOnly ? [] : body)
    }
}
