import FerryCore
import FerryWire

/// A native-relay credential: what signaling hands an authenticated peer for each relay it hands
/// out, derived from the secret that relay shares (`turn.static_auth_secrets`, as TURN REST
/// credentials are), so any relay holding the secret checks it alone, in any region, without
/// asking anyone (docs/relay-protocol.md, "Credentials").
///
/// Two parts, like TURN REST's username and password:
/// - the **token**, sent in every bind (CREDENTIAL attribute): `version 1 ‖ expiry (u64 BE, Unix
///   seconds) ‖ WireGuard public key (32) ‖ network length (1) ‖ network (UTF-8, ≤ 255)`;
/// - the **key**, HMAC-SHA256(secret, "ferry-relay-credential-v1" ‖ token), never sent: the bind
///   carries MESSAGE-INTEGRITY-SHA256 made with it. So a token seen on the wire binds nothing,
///   and a captured bind is tied to its source address by the relay's cookie.
/// The label keeps a TURN REST password and a relay key from ever standing in for each other.
public struct RelayCredential: Equatable, Sendable {
    public let expiry: UInt64
    public let key: WireGuardKey
    public let network: String

    public init(expiry: UInt64, key: WireGuardKey, network: String) {
        self.expiry = expiry
        self.key = key
        self.network = network
    }

    static let label = Array("ferry-relay-credential-v1".utf8)

    /// The token's bytes.
    public var token: [UInt8] {
        var out: [UInt8] = [1]
        withUnsafeBytes(of: expiry.bigEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: key.bytes)
        let net = Array(network.utf8.prefix(255))
        out.append(UInt8(net.count))
        out.append(contentsOf: net)
        return out
    }

    /// The integrity key `secret` gives a token.
    public static func integrityKey(secret: [UInt8], token: UnsafeRawBufferPointer) -> [UInt8] {
        Crypto.hmacSHA256(key: secret, data: label + Array(token))
    }

    public static func integrityKey(secret: String, token: [UInt8]) -> [UInt8] {
        token.withUnsafeBytes { integrityKey(secret: Array(secret.utf8), token: $0) }
    }

    public enum Refusal: Error, Equatable, Sendable { case malformed, expired }

    /// Parses a token and checks its expiry; the integrity check is the caller's (`RelayControl`).
    public static func parse(_ bytes: UnsafeRawBufferPointer, now: UInt64) -> Result<RelayCredential, Refusal> {
        guard bytes.count >= 42, bytes[0] == 1, bytes.count == 42 + Int(bytes[41]) else { return .failure(.malformed) }
        guard let network = String(validating: bytes[42...], as: UTF8.self) else { return .failure(.malformed) }
        let expiry = bytes.u64(1)
        guard expiry > now else { return .failure(.expired) }
        return .success(RelayCredential(expiry: expiry, key: WireGuardKey(UnsafeRawBufferPointer(rebasing: bytes[9..<41])), network: network))
    }
}

/// A WireGuard public key as four words: a 32-byte value that hashes and compares without an
/// allocation (a `[UInt8]` key would be one per lookup).
public struct WireGuardKey: Hashable, Comparable, Sendable {
    public var a: UInt64, b: UInt64, c: UInt64, d: UInt64

    public init(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == 32)
        a = bytes.u64(0); b = bytes.u64(8); c = bytes.u64(16); d = bytes.u64(24)
    }

    public init(_ bytes: [UInt8]) { self = bytes.withUnsafeBytes { WireGuardKey($0) } }

    public var bytes: [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(32)
        for w in [a, b, c, d] { withUnsafeBytes(of: w.bigEndian) { out.append(contentsOf: $0) } }
        return out
    }

    public static func < (l: WireGuardKey, r: WireGuardKey) -> Bool { (l.a, l.b, l.c, l.d) < (r.a, r.b, r.c, r.d) }
}
