import FerryWire
import FerryTLS

/// Who a connection is once authenticated.
public struct SignalIdentity: Equatable, Sendable {
    public let network: String
    /// Unix seconds after which the authorization lapses.
    public let expiry: UInt64

    public init(network: String, expiry: UInt64) {
        self.network = network
        self.expiry = expiry
    }
}

/// Stable error codes of the signaling protocol (docs/signaling.md).
public enum SignalErrorCode: String, Error, Sendable, CaseIterable {
    case badJSON = "bad_json"
    case badMessage = "bad_message"
    case unsupportedVersion = "unsupported_version"
    case unknownType = "unknown_type"
    case payloadTooLarge = "payload_too_large"
    case notAuthenticated = "not_authenticated"
    case authFailed = "auth_failed"
    case badProof = "bad_proof"
    case tokenExpired = "token_expired"
    case wrongNetwork = "wrong_network"
    case peerOffline = "peer_offline"
    case rateLimited = "rate_limited"
    case subscriptionLimit = "subscription_limit"
    case replaced
    case draining
    /// The recipient may be connected to another instance, which this one cannot reach now.
    case unavailable
}

/// A time claim (`exp`, `nbf`; RFC 7519 §2 NumericDate, which may have a fraction) as whole Unix
/// seconds, rounded down, or nil when it is not one: not a number, negative, or past the year
/// 9999. `NSNumber.uint64Value` made -1 into 2^64 - 1 (a token that never expires), and a JWT
/// signed with such an `exp` trapped on `exp + leeway` (found by the `token` fuzz target).
enum UnixSeconds {
    static let max: UInt64 = 253_402_300_799  // 9999-12-31T23:59:59Z

    static func claim(_ value: JSONValue?) -> UInt64? {
        guard let d = value?.number else { return nil }
        guard d.isFinite, d >= 0, d <= Double(max) else { return nil }
        return UInt64(d.rounded(.down))
    }
}

/// The shared-secret token for deployments without OIDC:
/// `ferry1.<base64url(JSON {"net", "peer"?, "exp"})>.<base64url(HMAC-SHA256(secret, "ferry1." + payload))>`.
/// `peer`, when present, binds the token to one WireGuard public key. `ferry token` mints them.
public enum SignalToken {
    public static func mint(secret: String, network: String, peer: String?, expiry: UInt64) -> String {
        // Keys in sorted order, as every ferry1 token has been minted.
        var claims: [(String, JSONValue)] = [("exp", .number(Double(expiry))), ("net", .string(network))]
        if let peer { claims.append(("peer", .string(peer))) }
        let payload = Base64.url(JSONValue.object(claims).encoded())
        let mac = Crypto.hmacSHA256(key: Array(secret.utf8), data: Array("ferry1.\(payload)".utf8))
        return "ferry1.\(payload).\(Base64.url(mac))"
    }

    public static func verify(_ token: String, secrets: [String], peer: String, now: UInt64) -> Result<SignalIdentity, SignalErrorCode> {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "ferry1", let mac = Base64.decode(String(parts[2])) else { return .failure(.authFailed) }
        let signed = Array("ferry1.\(parts[1])".utf8)
        guard secrets.contains(where: { Crypto.constantTimeEqual(Crypto.hmacSHA256(key: Array($0.utf8), data: signed), mac) }) else {
            return .failure(.authFailed)
        }
        guard let payload = Base64.decode(String(parts[1])),
              let claims = JSONValue.parse(payload), claims.isObject,
              let net = claims["net"]?.string, let exp = UnixSeconds.claim(claims["exp"]) else {
            return .failure(.authFailed)
        }
        // A network names who may reach whom: an empty one would be a shared default.
        guard !net.isEmpty else { return .failure(.wrongNetwork) }
        if let bound = claims["peer"], bound.string != peer { return .failure(.authFailed) }
        guard exp > now else { return .failure(.tokenExpired) }
        return .success(SignalIdentity(network: net, expiry: exp))
    }
}

/// JWT verification against a JWKS (RS256, ES256, EdDSA), with issuer, audience, expiry and a
/// configurable claim naming the network (and optionally one binding the peer key).
public final class JWTVerifier: @unchecked Sendable {
    /// Static after construction.
    private let keys: [(kid: String?, key: JWSKey)]
    public let issuer: String
    public let audience: String
    public let networkClaim: String
    public let peerClaim: String?
    public let leewaySeconds: UInt64 = 60

    public struct Failure: Error, CustomStringConvertible { public let description: String }

    public init(jwks: [UInt8], issuer: String, audience: String, networkClaim: String, peerClaim: String?) throws {
        guard let doc = JSONValue.parse(jwks), let list = doc["keys"]?.array else {
            throw Failure(description: "JWKS must be an object with a \"keys\" array")
        }
        var keys: [(String?, JWSKey)] = []
        for k in list where k.isObject {
            let kid = k["kid"]?.string
            func b(_ name: String) -> [UInt8]? { k[name]?.string.flatMap(Base64.decode) }
            switch k["kty"]?.string {
            case "RSA":
                if let n = b("n"), let e = b("e"), let key = JWSKey.rsa(n: n, e: e) { keys.append((kid, key)) }
            case "EC":
                if k["crv"]?.string == "P-256", let x = b("x"), let y = b("y"), let key = JWSKey.p256(x: x, y: y) { keys.append((kid, key)) }
            case "OKP":
                if k["crv"]?.string == "Ed25519", let x = b("x"), let key = JWSKey.ed25519(x: x) { keys.append((kid, key)) }
            default:
                continue
            }
        }
        guard !keys.isEmpty else { throw Failure(description: "JWKS has no usable RS256, ES256 or EdDSA key") }
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.networkClaim = networkClaim
        self.peerClaim = peerClaim
    }

    public var keyCount: Int { keys.count }

    public func verify(_ jwt: String, peer: String, now: UInt64) -> Result<SignalIdentity, SignalErrorCode> {
        let parts = jwt.split(separator: ".", omittingEmptySubsequences: false)
        // The header is parsed (it names the algorithm and key), the claims only once the
        // signature verifies: an unauthenticated client chooses the claims, not their cost.
        guard parts.count == 3, let headerBytes = Base64.decode(String(parts[0])), headerBytes.count <= 1024,
              let signature = Base64.decode(String(parts[2])),
              let header = JSONValue.parse(headerBytes), header.isObject,
              let alg = header["alg"]?.string else { return .failure(.authFailed) }
        let algorithm: JWSKey.Algorithm
        switch alg {
        case "RS256": algorithm = .rs256
        case "ES256": algorithm = .es256
        case "EdDSA": algorithm = .edDSA
        default: return .failure(.authFailed)  // never "none", never HMAC with a public key
        }
        let kid = header["kid"]?.string
        let signed = Array("\(parts[0]).\(parts[1])".utf8)
        let candidates = keys.filter { $0.key.algorithm == algorithm && (kid == nil || $0.kid == nil || $0.kid == kid) }
        guard candidates.contains(where: { $0.key.verify(signed, signature: signature) }) else { return .failure(.authFailed) }
        guard let payloadBytes = Base64.decode(String(parts[1])), let claims = JSONValue.parse(payloadBytes), claims.isObject else {
            return .failure(.authFailed)
        }
        guard claims["iss"]?.string == issuer else { return .failure(.authFailed) }
        // RFC 7519 §4.1.3: one string, or an array of strings.
        let audiences: [String] = claims["aud"]?.array?.compactMap(\.string) ?? (claims["aud"]?.string).map { [$0] } ?? []
        guard audiences.contains(audience) else { return .failure(.authFailed) }
        guard let exp = UnixSeconds.claim(claims["exp"]) else { return .failure(.authFailed) }
        // Leeway absorbs clock skew between the issuer and this server: a token is good until
        // exp + leeway, and the session it opens lasts exactly that long (welcome says when).
        guard exp + leewaySeconds > now else { return .failure(.tokenExpired) }
        if let nbfClaim = claims["nbf"] {
            guard let nbf = UnixSeconds.claim(nbfClaim), nbf <= now + leewaySeconds else { return .failure(.authFailed) }
        }
        guard let network = claims[networkClaim]?.string, !network.isEmpty else { return .failure(.wrongNetwork) }
        if let peerClaim, let bound = claims[peerClaim], bound.string != peer { return .failure(.authFailed) }
        return .success(SignalIdentity(network: network, expiry: exp + leewaySeconds))
    }
}

/// The server's signaling identity: a static X25519 key (kept in the state directory), and the
/// proof a peer must give: HMAC-SHA256 keyed with SHA-256("ferry-signal-v1" ‖ X25519(peer, server))
/// over challenge ‖ peer public key ‖ server public key.
public struct SignalServerKey: Sendable {
    public let privateKey: [UInt8]
    public let publicKey: [UInt8]

    public init(privateKey: [UInt8]) {
        self.privateKey = privateKey
        publicKey = X25519.publicKey(privateKey: privateKey) ?? []
    }

    public static func macKey(shared: [UInt8]) -> [UInt8] { Crypto.sha256(Array("ferry-signal-v1".utf8) + shared) }

    /// What a client computes (tests and the `ferry` CLI use it).
    public static func proof(peerPrivateKey: [UInt8], serverPublicKey: [UInt8], challenge: [UInt8]) -> [UInt8]? {
        guard let peerPub = X25519.publicKey(privateKey: peerPrivateKey),
              let shared = X25519.shared(privateKey: peerPrivateKey, peerPublicKey: serverPublicKey) else { return nil }
        return Crypto.hmacSHA256(key: macKey(shared: shared), data: challenge + peerPub + serverPublicKey)
    }

    public func verify(proof: [UInt8], peerPublicKey: [UInt8], challenge: [UInt8]) -> Bool {
        guard let shared = X25519.shared(privateKey: privateKey, peerPublicKey: peerPublicKey) else { return false }
        let expected = Crypto.hmacSHA256(key: SignalServerKey.macKey(shared: shared), data: challenge + peerPublicKey + publicKey)
        return Crypto.constantTimeEqual(expected, proof)
    }
}
