import FerryWire

/// Long-term credentials (RFC 8489 §9.2): static users from the config, and coturn-compatible
/// shared-secret ("TURN REST") credentials, which NetBird, Matrix and Nextcloud mint: the
/// username is `expiry` or `expiry:user` (Unix seconds), the password is
/// `base64(HMAC-SHA1(secret, username))`. Several secrets may be valid at once, for rotation.
/// Keys are `MD5(username ":" realm ":" password)` (RFC 8489 §9.2.2). Nothing here is logged.
public struct CredentialStore: Sendable {
    public let realm: String
    /// Static users: name → 16-byte key.
    private let users: [String: [UInt8]]
    private let secrets: [[UInt8]]

    public enum StaticKey: Sendable {
        case password(String)
        /// The precomputed MD5(user:realm:password), so the password itself need not be stored.
        case key([UInt8])
    }

    public init(realm: String, users: [String: StaticKey], secrets: [String]) {
        self.realm = realm
        var u: [String: [UInt8]] = [:]
        for (name, k) in users {
            switch k {
            case .password(let p): u[name] = CredentialStore.longTermKey(username: name, realm: realm, password: p)
            case .key(let k): u[name] = k
            }
        }
        self.users = u
        self.secrets = secrets.map { Array($0.utf8) }
    }

    public static func longTermKey(username: String, realm: String, password: String) -> [UInt8] {
        Crypto.md5(Array("\(username):\(realm):\(password)".utf8))
    }

    public enum Lookup: Equatable, Sendable {
        /// Candidate keys; the message's integrity decides which, if any, is right.
        case keys([[UInt8]])
        /// A REST username whose expiry has passed.
        case expired
        /// Neither a static user nor a REST username (or no secret configured).
        case unknown
    }

    /// The keys `username` may be using at wall-clock time `now` (Unix seconds).
    public func keys(for username: String, now: UInt64) -> Lookup {
        if let k = users[username] { return .keys([k]) }
        guard !secrets.isEmpty else { return .unknown }
        let stamp = username.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        guard !stamp.isEmpty, stamp.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let expiry = UInt64(stamp) else { return .unknown }
        guard expiry > now else { return .expired }
        return .keys(secrets.map { secret in
            let password = Base64.std(Crypto.hmacSHA1(key: secret, data: Array(username.utf8)))
            return CredentialStore.longTermKey(username: username, realm: realm, password: password)
        })
    }

    public var userCount: Int { users.count }
    public var secretCount: Int { secrets.count }
}
