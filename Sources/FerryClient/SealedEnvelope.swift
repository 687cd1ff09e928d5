import FerryTLS
import FerryWire

/// End-to-end sealing of signaling payloads between two WireGuard keys (docs/signaling.md,
/// "Sealed payloads"). The server routes the envelope as an opaque string; only the two peers can
/// open it, and each opens a message at most once, within a clock window, in its direction only.
///
/// ```
/// shared   = X25519(own private key, other public key)
/// key      = SHA-256("ferry-seal-v1" ‖ shared ‖ lower public key ‖ higher public key)
/// ad       = "ferry-seal-v1" ‖ len(type) ‖ type ‖ sender public key ‖ recipient public key ‖ 0x01 ‖ time
/// envelope = base64( 0x01 ‖ time (u64 big-endian, Unix ms) ‖ nonce (12 random bytes)
///                    ‖ ChaCha20-Poly1305(key, nonce, plaintext, ad) )
/// ```
/// Binding the sender and recipient keys into `ad` refuses reflection (a message sent back to its
/// author opens with the keys swapped and fails); binding `type` refuses an offer replayed as an
/// answer; the time window and the nonce cache refuse replays.
///
/// Replay state is kept per sender, so one peer (however many envelopes it sends, stamped however
/// far ahead) cannot move another's floor or fill another's cache. And per sender and type, only
/// a message newer than the last one accepted opens (`highWater`): an older offer delivered after
/// a newer one is refused rather than resetting the session, and the marks, saved by the agent
/// and handed back after a restart (`restore`), refuse a replay from before the restart that
/// the in-memory nonce cache no longer knows.
public struct SealedEnvelope {
    public static let version: UInt8 = 1
    static let label = Array("ferry-seal-v1".utf8)
    /// How far a sender's clock may be from ours, either way, and how long nonces are remembered.
    public static let windowMilliseconds: UInt64 = 120_000
    /// Nonces remembered per sender (past it the oldest are forgotten behind a floor).
    public static let maxRemembered = 1024

    public enum Failure: Error, Equatable, Sendable, CustomStringConvertible {
        case malformed, badKey, unsupportedVersion, stale, replayed, forged, reordered
        public var description: String {
            switch self {
            case .malformed: "not a sealed envelope"
            case .badKey: "the other key is not a usable X25519 public key"
            case .unsupportedVersion: "unsupported envelope version"
            case .stale: "outside the clock window"
            case .replayed: "already opened once"
            case .forged: "does not verify (wrong keys, type or tampered)"
            case .reordered: "not newer than the last one accepted from that sender"
            }
        }
    }

    let privateKey: [UInt8]
    public let publicKey: [UInt8]
    /// Pair keys by the other side's public key (one X25519 per peer, not per message).
    private var keys: [[UInt8]: [UInt8]] = [:]
    /// One sender's nonces opened within the window, oldest first; anything at or before
    /// `floor` is refused.
    struct Replay {
        var seen: Set<[UInt8]> = []
        var order: [(time: UInt64, nonce: [UInt8])] = []
        var floor: UInt64 = 0
    }
    private var replay: [[UInt8]: Replay] = [:]
    /// Per sender and type (`Mark`): the time of the newest message accepted.
    public private(set) var highWater: [Mark: UInt64] = [:]

    public struct Mark: Hashable, Sendable {
        public let sender: [UInt8]
        public let type: String
        public init(sender: [UInt8], type: String) {
            self.sender = sender
            self.type = type
        }
    }

    /// Marks saved before a restart; a newer one already known wins.
    public mutating func restore(_ marks: [Mark: UInt64]) {
        for (k, v) in marks { highWater[k] = max(highWater[k] ?? 0, v) }
    }

    public init?(privateKey: [UInt8]) {
        guard let pub = X25519.publicKey(privateKey: privateKey) else { return nil }
        self.privateKey = privateKey
        publicKey = pub
    }

    mutating func pairKey(_ other: [UInt8]) -> [UInt8]? {
        if let k = keys[other] { return k }
        guard other.count == 32, let shared = X25519.shared(privateKey: privateKey, peerPublicKey: other),
              shared.contains(where: { $0 != 0 }) else { return nil }
        let (lo, hi) = publicKey.lexicographicallyPrecedes(other) ? (publicKey, other) : (other, publicKey)
        let k = Crypto.sha256(Self.label + shared + lo + hi)
        keys[other] = k
        return k
    }

    static func associatedData(type: String, sender: [UInt8], recipient: [UInt8], time: UInt64) -> [UInt8] {
        let t = Array(type.utf8.prefix(255))
        return label + [UInt8(t.count)] + t + sender + recipient + [version] + bigEndian(time)
    }

    static func bigEndian(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64($0))) } }

    /// Seals `plaintext` for `recipient` as message kind `type` at wall-clock `nowMilliseconds`.
    public mutating func seal(_ plaintext: [UInt8], type: String, to recipient: [UInt8], nowMilliseconds: UInt64,
                              nonce: [UInt8] = Crypto.randomBytes(Crypto.aeadNonceLength)) throws(Failure) -> String {
        guard let key = pairKey(recipient) else { throw .badKey }
        let ad = Self.associatedData(type: type, sender: publicKey, recipient: recipient, time: nowMilliseconds)
        let sealed = Crypto.seal(key: key, nonce: nonce, plaintext: plaintext, associatedData: ad)
        return Base64.std([Self.version] + Self.bigEndian(nowMilliseconds) + nonce + sealed)
    }

    /// Opens an envelope that the server says came from `sender` as kind `type`.
    public mutating func open(_ envelope: String, type: String, from sender: [UInt8], nowMilliseconds: UInt64) throws(Failure) -> [UInt8] {
        guard let raw = Base64.decode(envelope), raw.count >= 1 + 8 + Crypto.aeadNonceLength + Crypto.aeadTagLength else { throw .malformed }
        guard raw[0] == Self.version else { throw .unsupportedVersion }
        let time = raw[1..<9].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let nonce = Array(raw[9..<21])
        let skew = time > nowMilliseconds ? time - nowMilliseconds : nowMilliseconds - time
        let state = replay[sender] ?? Replay()
        guard skew <= Self.windowMilliseconds, time > state.floor else { throw .stale }
        guard !state.seen.contains(nonce) else { throw .replayed }
        let mark = Mark(sender: sender, type: type)
        guard time > highWater[mark] ?? 0 else { throw .reordered }
        guard let key = pairKey(sender) else { throw .badKey }
        let ad = Self.associatedData(type: type, sender: sender, recipient: publicKey, time: time)
        guard let plain = Crypto.open(key: key, nonce: nonce, sealed: Array(raw[21...]), associatedData: ad) else { throw .forged }
        // Only what verified is remembered: an unauthenticated envelope changes no state.
        replay[sender, default: Replay()].remember(nonce, time: time, now: nowMilliseconds)
        highWater[mark] = time
        return plain
    }
}

extension SealedEnvelope.Replay {
    mutating func remember(_ nonce: [UInt8], time: UInt64, now: UInt64) {
        // Forget what the window refuses anyway; past the cap, forget the oldest and refuse
        // everything up to its time from now on (so forgetting never admits a replay).
        let horizon = now > 2 * SealedEnvelope.windowMilliseconds ? now - 2 * SealedEnvelope.windowMilliseconds : 0
        var drop = 0
        while drop < order.count && (order[drop].time < horizon || order.count - drop >= SealedEnvelope.maxRemembered) {
            seen.remove(order[drop].nonce)
            if order[drop].time >= horizon { floor = max(floor, order[drop].time) }
            drop += 1
        }
        if drop > 0 { order.removeFirst(drop) }
        seen.insert(nonce)
        let at = order.lastIndex(where: { $0.time <= time }).map { $0 + 1 } ?? 0
        order.insert((time, nonce), at: at)
    }
}
