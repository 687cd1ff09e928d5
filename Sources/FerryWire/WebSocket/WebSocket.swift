import COpenSSL

/// WebSocket (RFC 6455): the server's and the client's opening handshakes and the frame codec. Pure; the
/// connection buffers bytes and writes what this returns. Hand-written because it is small and
/// sits on the signaling connection's read path, where it must never trap on hostile input.
public enum WebSocket {
    public static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    public enum Opcode: UInt8, Sendable {
        case continuation = 0x0, text = 0x1, binary = 0x2, close = 0x8, ping = 0x9, pong = 0xA
    }

    /// Close codes (RFC 6455 §7.4.1) Ferry sends.
    public enum CloseCode: UInt16, Sendable {
        case normal = 1000, goingAway = 1001, protocolError = 1002, unsupportedData = 1003,
             invalidPayload = 1007, policyViolation = 1008, tooBig = 1009, internalError = 1011
        /// Application codes (4000–4999): replaced by a newer connection with the same key.
        case replaced = 4000
        /// Authentication failed or timed out.
        case unauthorized = 4001
    }

    /// The handshake answer for a request head, or the HTTP status to refuse it with.
    public static func accept(_ head: HTTPRequestHead) -> Result<[UInt8], HandshakeFailure> {
        guard head.method == "GET" else { return .failure(.init(status: 405, reason: "WebSocket needs GET")) }
        guard head.header("Upgrade")?.lowercased() == "websocket",
              head.header("Connection")?.lowercased().split(separator: ",").contains(where: { $0.trimmingCharacters() == "upgrade" }) == true
        else { return .failure(.init(status: 426, reason: "Upgrade: websocket required")) }
        guard head.header("Sec-WebSocket-Version") == "13" else {
            // RFC 6455 §4.2.2: say which version this server speaks.
            return .failure(.init(status: 426, reason: "Sec-WebSocket-Version: 13 required",
                                  headers: [("Sec-WebSocket-Version", "13")]))
        }
        guard let key = head.header("Sec-WebSocket-Key"), isNonce(key) else {
            return .failure(.init(status: 400, reason: "bad Sec-WebSocket-Key (must be 16 bytes in base64)"))
        }
        let digest = Array((key + guid).utf8).withUnsafeBytes { Crypto.digest(EVP_sha1(), $0, size: 20) }
        let response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Accept: \(Base64.std(digest))\r\n\r\n"
        return .success(Array(response.utf8))
    }

    /// RFC 6455 §4.2.1: the key is a base64-encoded 16-byte value: 22 alphabet characters, the
    /// last of which carries only 2 bits (so one of A, Q, g, w), then "==".
    static func isNonce(_ key: String) -> Bool {
        let b = Array(key.utf8)
        guard b.count == 24, b[22] == UInt8(ascii: "="), b[23] == UInt8(ascii: "=") else { return false }
        func isAlphabet(_ c: UInt8) -> Bool {
            (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x2B || c == 0x2F
        }
        guard b[0..<22].allSatisfy(isAlphabet) else { return false }
        return [UInt8(ascii: "A"), UInt8(ascii: "Q"), UInt8(ascii: "g"), UInt8(ascii: "w")].contains(b[21])
    }

    public struct HandshakeFailure: Error, Equatable, Sendable {
        public let status: Int
        public let reason: String
        public var headers: [String: String] = [:]

        public init(status: Int, reason: String, headers: [(String, String)] = []) {
            self.status = status
            self.reason = reason
            self.headers = Dictionary(headers, uniquingKeysWith: { a, _ in a })
        }
    }

    /// One parsed frame header and where its payload is.
    public struct Frame: Equatable, Sendable {
        public let fin: Bool
        public let opcode: Opcode
        public let payloadStart: Int
        public let payloadLength: Int
        public let maskKey: UInt32?
        public var frameLength: Int { payloadStart + payloadLength }
    }

    public enum ParseResult: Equatable, Sendable {
        case incomplete
        case frame(Frame)
        case failure(CloseCode)
    }

    /// Parses the next frame header: from a client (frames must be masked, RFC 6455 §5.1), or
    /// with `fromServer` from a server (frames must not be).
    public static func parse(_ b: UnsafeRawBufferPointer, maxPayload: Int, fromServer: Bool = false) -> ParseResult {
        guard b.count >= 2 else { return .incomplete }
        let b0 = b[0], b1 = b[1]
        if b0 & 0x70 != 0 { return .failure(.protocolError) }  // RSV bits without an extension
        guard let opcode = Opcode(rawValue: b0 & 0x0F) else { return .failure(.protocolError) }
        let fin = b0 & 0x80 != 0
        guard (b1 & 0x80 != 0) != fromServer else { return .failure(.protocolError) }  // masking by direction
        var length = Int(b1 & 0x7F)
        var offset = 2
        if length == 126 {
            guard b.count >= 4 else { return .incomplete }
            length = Int(b.u16(2))
            offset = 4
        } else if length == 127 {
            guard b.count >= 10 else { return .incomplete }
            let l = b.u64(2)
            guard l <= UInt64(Int32.max) else { return .failure(.tooBig) }
            length = Int(l)
            offset = 10
        }
        if opcode.rawValue >= 0x8 && (length > 125 || !fin) { return .failure(.protocolError) }
        if length > maxPayload { return .failure(.tooBig) }
        var mask: UInt32?
        if !fromServer {
            guard b.count >= offset + 4 else { return .incomplete }
            mask = b.u32(offset)
            offset += 4
        }
        guard b.count >= offset + length else { return .incomplete }
        return .frame(Frame(fin: fin, opcode: opcode, payloadStart: offset, payloadLength: length, maskKey: mask))
    }

    /// Unmasks a payload in place (RFC 6455 §5.3).
    public static func unmask(_ p: UnsafeMutableRawBufferPointer, key: UInt32) {
        let k: [UInt8] = [UInt8(key >> 24), UInt8(key >> 16 & 0xFF), UInt8(key >> 8 & 0xFF), UInt8(key & 0xFF)]
        for i in 0..<p.count { p[i] ^= k[i & 3] }
    }

    /// A server frame (unmasked) with `payload`; with `mask`, a client frame (RFC 6455 §5.3:
    /// every frame a client sends is masked, with a fresh unpredictable key per frame).
    public static func encode(_ opcode: Opcode, _ payload: some Collection<UInt8>, mask: UInt32? = nil) -> [UInt8] {
        var out: [UInt8] = [0x80 | opcode.rawValue]
        let n = payload.count
        let maskBit: UInt8 = mask == nil ? 0 : 0x80
        if n < 126 {
            out.append(UInt8(n) | maskBit)
        } else if n <= 0xFFFF {
            out += [126 | maskBit, UInt8(n >> 8), UInt8(n & 0xFF)]
        } else {
            out.append(127 | maskBit)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: n >> shift)) }
        }
        guard let mask else {
            out += payload
            return out
        }
        out += [UInt8(mask >> 24), UInt8(mask >> 16 & 0xFF), UInt8(mask >> 8 & 0xFF), UInt8(mask & 0xFF)]
        let start = out.count
        out += payload
        out.withUnsafeMutableBytes { unmask(UnsafeMutableRawBufferPointer(rebasing: $0[start...]), key: mask) }
        return out
    }

    public static func close(_ code: CloseCode, reason: String = "", mask: UInt32? = nil) -> [UInt8] {
        encode(.close, [UInt8(code.rawValue >> 8), UInt8(code.rawValue & 0xFF)] + Array(reason.utf8.prefix(120)), mask: mask)
    }

    // MARK: The client's handshake (RFC 6455 §4.1)

    /// The upgrade request for `path` on `host` with a 16-byte `key` (random per connection).
    public static func clientRequest(host: String, path: String, key: [UInt8]) -> [UInt8] {
        Array(("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               + "Sec-WebSocket-Key: \(Base64.std(key))\r\nSec-WebSocket-Version: 13\r\n\r\n").utf8)
    }

    public enum ClientHandshake: Equatable, Sendable {
        /// Not a whole response head yet.
        case incomplete
        /// Upgraded; the frames start at `consumed`.
        case upgraded(consumed: Int)
        /// Refused: the status (0 when the head is not HTTP) and why.
        case refused(status: Int, reason: String)
    }

    /// Checks the server's answer: `101`, `Upgrade: websocket`, and the `Sec-WebSocket-Accept`
    /// that proves it read our key.
    public static func checkResponse(_ b: UnsafeRawBufferPointer, key: [UInt8]) -> ClientHandshake {
        guard let end = b.indices.dropLast(3).first(where: { b[$0] == 13 && b[$0 + 1] == 10 && b[$0 + 2] == 13 && b[$0 + 3] == 10 }) else {
            return b.count > 16384 ? .refused(status: 0, reason: "response head too long") : .incomplete
        }
        let lines = String(decoding: b[0..<end], as: UTF8.self).split(separator: "\r\n", omittingEmptySubsequences: false)
        let status = lines.first?.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        guard status == 101 else { return .refused(status: status, reason: String(lines.first ?? "")) }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters()
        }
        let expected = Base64.std(Array((Base64.std(key) + guid).utf8).withUnsafeBytes { Crypto.digest(EVP_sha1(), $0, size: 20) })
        guard headers["upgrade"]?.lowercased() == "websocket", headers["sec-websocket-accept"] == expected else {
            return .refused(status: 101, reason: "bad Upgrade or Sec-WebSocket-Accept")
        }
        return .upgraded(consumed: end + 4)
    }
}

extension Substring {
    func trimmingCharacters() -> String {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
