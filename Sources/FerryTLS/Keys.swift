import CFerryTLS
import COpenSSL
#if canImport(Glibc)
import Glibc
#endif

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

/// A one-shot HTTPS GET with certificate and host-name verification (the issuer's JWKS, fetched
/// at start and on reload on the control thread; never on a worker).
public enum HTTPSFetch {
    public static func get(_ url: String, caFile: String?, timeoutSeconds: Int = 10, maxBytes: Int = 1 << 20) throws(TLSError) -> [UInt8] {
        guard url.hasPrefix("https://") else { throw TLSError("\(url): only https:// URLs are fetched") }
        let rest = url.dropFirst("https://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let path = slash == rest.endIndex ? "/" : String(rest[slash...])
        var host = String(authority), port = "443"
        if let colon = authority.lastIndex(of: ":"), !authority.hasPrefix("[") {
            host = String(authority[..<colon])
            port = String(authority[authority.index(after: colon)...])
        }
        guard !host.isEmpty, UInt16(port) != nil else { throw TLSError("\(url): bad host or port") }
        var body: UnsafeMutablePointer<CChar>?
        var length = 0
        var err = [CChar](repeating: 0, count: 256)
        let status = ferry_https_get(host, port, path, caFile ?? "", Int32(timeoutSeconds), maxBytes, &body, &length, &err, err.count)
        defer { free(body) }
        guard status >= 0 else {
            throw TLSError("\(url): " + String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        guard status == 200, let body else { throw TLSError("\(url): HTTP status \(status)") }
        return UnsafeRawBufferPointer(start: body, count: length).map { $0 }
    }
}
