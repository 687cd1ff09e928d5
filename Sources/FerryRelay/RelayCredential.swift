import FerryCore
import FerryWire

/// A native-relay credential: what signaling hands an authenticated peer for each relay, minted
/// with the secret that relay shares (`turn.static_auth_secret`, as TURN REST credentials are),
/// so any relay holding the secret checks it alone, in any region, without asking anyone.
///
/// Wire form (docs/relay-protocol.md), carried opaque in the CREDENTIAL attribute:
/// `version 1 (1 byte) ‖ expiry (u64, Unix seconds) ‖ public key (32) ‖ network length (1) ‖
/// network (UTF-8, ≤ 255) ‖ MAC (32)`, the MAC being HMAC-SHA256(secret,
/// "ferry-relay-credential-v1" ‖ every byte before the MAC). The label keeps a TURN REST
/// password and a relay credential from ever standing in for each other.
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
    static let macLength = 32

    /// The credential's bytes, with its MAC under `secret`.
    public func encoded(secret: String) -> [UInt8] {
        var out: [UInt8] = [1]
        withUnsafeBytes(of: expiry.bigEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: key.bytes)
        let net = Array(network.utf8.prefix(255))
        out.append(UInt8(net.count))
        out.append(contentsOf: net)
        out.append(contentsOf: Crypto.hmacSHA256(key: Array(secret.utf8), data: RelayCredential.label + out))
        return out
    }

    public enum Refusal: Error, Equatable, Sendable { case malformed, badMAC, expired }

    /// Parses and checks `bytes` against each of `secrets` (more than one while a secret rotates).
    public static func verify(_ bytes: UnsafeRawBufferPointer, secrets: [[UInt8]], now: UInt64) -> Result<RelayCredential, Refusal> {
        guard bytes.count >= 1 + 8 + 32 + 1 + macLength, bytes[0] == 1 else { return .failure(.malformed) }
        let netLength = Int(bytes[41])
        let body = 42 + netLength
        guard bytes.count == body + macLength else { return .failure(.malformed) }
        let signed = RelayCredential.label + Array(bytes[0..<body])
        let mac = UnsafeRawBufferPointer(rebasing: bytes[body...])
        guard secrets.contains(where: { s in Crypto.hmacSHA256(key: s, data: signed).withUnsafeBytes { Crypto.constantTimeEqual($0, mac) } }) else {
            return .failure(.badMAC)
        }
        let expiry = bytes.u64(1)
        guard expiry > now else { return .failure(.expired) }
        guard let network = String(validating: bytes[42..<body], as: UTF8.self) else { return .failure(.malformed) }
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
