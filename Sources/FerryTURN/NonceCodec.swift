import FerryWire

/// Stateless nonces (RFC 8489 §9.2): `hex(time) + hex(MAC(secret, time ‖ client IP))`. Any
/// worker can check one, and so can the next process with the same secret, so a restart or a
/// client moving between workers does not break authentication. Stale after `lifetime`.
public struct NonceCodec: Sendable {
    private let secret: [UInt8]
    public let lifetime: UInt64

    public init(secret: [UInt8], lifetimeSeconds: UInt64) {
        precondition(!secret.isEmpty)
        self.secret = secret
        self.lifetime = lifetimeSeconds
    }

    private func mac(_ time: UInt64, _ ip: [UInt8]) -> [UInt8] {
        var data = withUnsafeBytes(of: time.bigEndian) { Array($0) }
        data += ip
        return Array(Crypto.hmacSHA256(key: secret, data: data)[0..<12])
    }

    /// A fresh nonce for a client at wall-clock `now` (seconds).
    public func make(for clientIP: [UInt8], now: UInt64) -> String {
        Crypto.hex(withUnsafeBytes(of: now.bigEndian) { Array($0) }) + Crypto.hex(mac(now, clientIP))
    }

    public enum Check: Equatable, Sendable { case valid, stale, invalid }

    public func check(_ nonce: String, clientIP: [UInt8], now: UInt64) -> Check {
        guard nonce.utf8.count == 40, let raw = Crypto.unhex(nonce) else { return .invalid }
        let time = raw[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard Crypto.constantTimeEqual(Array(raw[8...]), mac(time, clientIP)) else { return .invalid }
        // A nonce from the future (clock stepped back) is as unusable as an old one.
        return time <= now && now - time < lifetime ? .valid : .stale
    }
}
