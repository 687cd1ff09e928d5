import CFerryTLS
import COpenSSL

/// X25519 keys for signaling identities: a WireGuard key pair is an X25519 key pair, so a peer
/// proves it holds its WireGuard private key by deriving the shared secret with the server's key.
public enum X25519 {
    public static func keyPair() -> (privateKey: [UInt8], publicKey: [UInt8]) {
        var priv = [UInt8](repeating: 0, count: 32), pub = [UInt8](repeating: 0, count: 32)
        precondition(ferry_x25519_keypair(&priv, &pub) == 1, "X25519 key generation failed")
        return (priv, pub)
    }

    public static func publicKey(privateKey: [UInt8]) -> [UInt8]? {
        guard privateKey.count == 32 else { return nil }
        var pub = [UInt8](repeating: 0, count: 32)
        return ferry_x25519_public(privateKey, &pub) == 1 ? pub : nil
    }

    /// The shared secret, or nil for a malformed or low-order public key.
    public static func shared(privateKey: [UInt8], peerPublicKey: [UInt8]) -> [UInt8]? {
        guard privateKey.count == 32, peerPublicKey.count == 32 else { return nil }
        var out = [UInt8](repeating: 0, count: 32)
        return ferry_x25519_shared(privateKey, peerPublicKey, &out) == 1 ? out : nil
    }
}

/// A public key from a JWK, for verifying JWS signatures (RS256, ES256, EdDSA) with OpenSSL,
/// the project's one crypto library (a JWT package would bring BoringSSL as a second one).
public final class JWSKey: @unchecked Sendable {
    public enum Algorithm: Int32, Sendable {
        case rs256 = 1, es256 = 2, edDSA = 3
    }

    private let key: OpaquePointer
    public let algorithm: Algorithm

    private init(key: OpaquePointer, algorithm: Algorithm) {
        self.key = key
        self.algorithm = algorithm
    }

    deinit { ferry_pkey_free(key) }

    public static func rsa(n: [UInt8], e: [UInt8]) -> JWSKey? {
        ferry_pkey_rsa(n, n.count, e, e.count).map { JWSKey(key: $0, algorithm: .rs256) }
    }

    public static func p256(x: [UInt8], y: [UInt8]) -> JWSKey? {
        ferry_pkey_ec_p256(x, x.count, y, y.count).map { JWSKey(key: $0, algorithm: .es256) }
    }

    public static func ed25519(x: [UInt8]) -> JWSKey? {
        ferry_pkey_ed25519(x, x.count).map { JWSKey(key: $0, algorithm: .edDSA) }
    }

    public func verify(_ data: [UInt8], signature: [UInt8]) -> Bool {
        ferry_jws_verify(key, algorithm.rawValue, data, data.count, signature, signature.count) == 1
    }
}
