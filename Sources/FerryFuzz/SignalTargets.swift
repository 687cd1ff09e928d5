import COpenSSL
import Foundation
import FerrySignal
import FerryTLS
import FerryWire

/// Fixed keys for the signaling targets (made once: key generation per input would dominate).
enum FuzzKeys {
    static let tokenSecret = "0123456789abcdef"
    static let server = SignalServerKey(privateKey: [UInt8](repeating: 0x41, count: 32))
    /// Three peers with real X25519 key pairs, so authentication can succeed.
    static let peers: [(privateKey: [UInt8], key: String)] = (1...3).map { i in
        let priv = [UInt8](repeating: UInt8(0x10 * i), count: 32)
        return (priv, Base64.std(X25519.publicKey(privateKey: priv)!))
    }
    static let issuer = "https://issuer.fuzz"
    static let audience = "ferry"
    static let jwtSigner = Ed25519Signer(privateKey: [UInt8](repeating: 0x5A, count: 32))
    static let jwt = try! JWTVerifier(jwks: Array(#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"\#(Base64.url(jwtSigner.publicKey))"}]}"#.utf8),
                                      issuer: issuer, audience: audience, networkClaim: "net", peerClaim: "peer")

    /// A JWT over `header` and `claims` (JSON texts), validly signed.
    static func signedJWT(header: [UInt8], claims: [UInt8]) -> String {
        let signingInput = "\(Base64.url(header)).\(Base64.url(claims))"
        return "\(signingInput).\(Base64.url(jwtSigner.sign(Array(signingInput.utf8))))"
    }

    /// A ferry1 token over `claims` (a JSON text), validly MACed.
    static func signedToken(claims: [UInt8]) -> String {
        let payload = Base64.url(claims)
        return "ferry1.\(payload).\(Base64.url(Crypto.hmacSHA256(key: Array(tokenSecret.utf8), data: Array("ferry1.\(payload)".utf8))))"
    }
}

/// Ed25519 signing for the fuzz targets' own JWTs (the server only verifies, so it has no signer).
final class Ed25519Signer: @unchecked Sendable {
    private let key: OpaquePointer
    let publicKey: [UInt8]

    init(privateKey: [UInt8]) {
        key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nil, privateKey, privateKey.count)!
        var pub = [UInt8](repeating: 0, count: 32)
        var n = 32
        EVP_PKEY_get_raw_public_key(key, &pub, &n)
        publicKey = pub
    }

    deinit { EVP_PKEY_free(key) }

    func sign(_ data: [UInt8]) -> [UInt8] {
        let ctx = EVP_MD_CTX_new()!
        defer { EVP_MD_CTX_free(ctx) }
        var sig = [UInt8](repeating: 0, count: 64)
        var n = 64
        guard EVP_DigestSignInit(ctx, nil, nil, nil, key) == 1, EVP_DigestSign(ctx, &sig, &n, data, data.count) == 1 else {
            fatalError("Ed25519 signing failed")
        }
        return sig
    }
}

enum SignalTargets {
    /// The hand-written JSON reader: anything it accepts, its writer must write back as the same value.
    static func json(_ b: UnsafeRawBufferPointer) {
        let bytes = Array(b)
        guard let v = JSONValue.parse(bytes) else { return }
        let again = v.encoded()
        guard let w = JSONValue.parse(again) else {
            require(false, "the writer's output parses: \(String(decoding: again, as: UTF8.self))")
            return
        }
        require(w == v, "a value survives writing and reading")
        require(w.encoded() == again, "writing is deterministic")
    }

    /// Tokens as a peer sends them: forged (the input is the token) and validly signed over
    /// fuzzed claims (the input is the claims), for both ferry1 tokens and JWTs.
    static func token(_ b: UnsafeRawBufferPointer) {
        var r = FuzzReader(b)
        let mode = r.byte() % 4
        let now = UInt64(r.u32())
        let peer = FuzzKeys.peers[0].key
        let rest = r.take(b.count)
        let result: Result<SignalIdentity, SignalErrorCode>
        switch mode {
        case 0: result = SignalToken.verify(String(decoding: rest, as: UTF8.self), secrets: [FuzzKeys.tokenSecret], peer: peer, now: now)
        case 1: result = SignalToken.verify(FuzzKeys.signedToken(claims: rest), secrets: [FuzzKeys.tokenSecret], peer: peer, now: now)
        case 2: result = FuzzKeys.jwt.verify(String(decoding: rest, as: UTF8.self), peer: peer, now: now)
        default:
            // A header blob, then claims: an issuer's JWT with whatever it chose to put in it.
            let split = rest.firstIndex(of: 0) ?? 0
            let header = split == 0 ? Array(#"{"alg":"EdDSA","kid":"k1"}"#.utf8) : Array(rest[..<split])
            let claims = Array(rest[(split == 0 ? 0 : split + 1)...])
            result = FuzzKeys.jwt.verify(FuzzKeys.signedJWT(header: header, claims: claims), peer: peer, now: now)
        }
        if case .success(let identity) = result {
            require(!identity.network.isEmpty, "an identity has a network")
            require(identity.expiry > now, "an identity is not already expired")
        }
    }

    /// JWKS documents as fetched from an issuer: a verifier or a clear error.
    static func jwks(_ b: UnsafeRawBufferPointer) {
        guard let v = try? JWTVerifier(jwks: Array(b), issuer: FuzzKeys.issuer, audience: FuzzKeys.audience,
                                       networkClaim: "net", peerClaim: nil) else { return }
        require(v.keyCount > 0, "a verifier has a key")
        _ = v.verify(FuzzKeys.signedJWT(header: Array(#"{"alg":"EdDSA"}"#.utf8), claims: Array(#"{"net":"n","exp":1}"#.utf8)),
                     peer: FuzzKeys.peers[0].key, now: 0)
    }
}
