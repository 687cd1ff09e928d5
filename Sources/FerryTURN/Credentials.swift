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
            let password = Crypto.base64(Crypto.hmacSHA1(key: secret, data: Array(username.utf8)))
            return CredentialStore.longTermKey(username: username, realm: realm, password: password)
        })
    }

    public var userCount: Int { users.count }
    public var secretCount: Int { secrets.count }
}

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

/// Token buckets keyed by source, bounded in size: the per-source limit on 401 answers, so the
/// server cannot be made to reflect traffic at a spoofed address. Owned by one worker.
public struct RateLimiter<Key: Hashable> {
    private struct Bucket {
        var tokens: Double
        var last: UInt64
    }

    public let ratePerSecond: Double
    public let burst: Double
    public let maxKeys: Int
    private var buckets: [Key: Bucket] = [:]

    public init(ratePerSecond: Double, burst: Double, maxKeys: Int = 65536) {
        self.ratePerSecond = ratePerSecond
        self.burst = max(1, burst)
        self.maxKeys = maxKeys
    }

    /// Takes one token for `key` at monotonic `now` (ns); false when the bucket is empty, or when
    /// the table is full of other sources (fail closed under a spoofed-source flood).
    public mutating func allow(_ key: Key, now: UInt64) -> Bool {
        if ratePerSecond <= 0 { return true }
        if var b = buckets[key] {
            let elapsed = Double(now &- b.last) / 1e9
            b.tokens = min(burst, b.tokens + elapsed * ratePerSecond)
            b.last = now
            guard b.tokens >= 1 else {
                buckets[key] = b
                return false
            }
            b.tokens -= 1
            buckets[key] = b
            return true
        }
        guard buckets.count < maxKeys else { return false }
        buckets[key] = Bucket(tokens: burst - 1, last: now)
        return true
    }

    /// Forgets sources whose buckets have been full for a while (called by the sweep).
    public mutating func sweep(now: UInt64) {
        guard ratePerSecond > 0 else {
            buckets.removeAll()
            return
        }
        let refill = UInt64(burst / ratePerSecond * 1e9)
        buckets = buckets.filter { now &- $0.value.last < refill }
    }

    public var count: Int { buckets.count }
}
