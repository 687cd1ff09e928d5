import FerryCore
import FerryWire

/// The NATS subjects signaling across instances uses (docs/deployment.md, "Subjects"). Every
/// name that came from a peer (its network, from a token or a JWT claim; its key) is hex-encoded
/// before it becomes a token: in a subject `.` separates tokens and `*` and `>` are wildcards, so
/// a crafted network such as `a.>` would otherwise reach every network's subjects.
///
///     P.<net>.p.<key>        a connected peer (its instance subscribes): messages and claims
///     P.<net>.o.<key>        presence of a key (instances with watchers in <net> take `P.<net>.o.*`)
///     P.<net>.q              who holds these keys (instances with peers in <net> answer)
///     P.r.<instance>.>       replies to one instance: `m.<worker>.<seq>` (no-responders, "gone"),
///                            `q.<worker>.<conn>.<net>` and `s.<net>` (query answers)
///     P.hb.<instance>        heartbeats (every instance takes `P.hb.*`)
public struct ClusterSubjects: Sendable, Equatable {
    public let prefix: String
    public let instance: String

    /// `prefix`: tokens of letters, digits, `_` and `-`, separated by dots. `instance`: one such token.
    public init?(prefix: String, instance: String) {
        guard ClusterSubjects.isSubject(prefix), ClusterSubjects.isToken(instance) else { return nil }
        self.prefix = prefix
        self.instance = instance
    }

    public static func isToken(_ s: String) -> Bool { SubjectText.isToken(s) }
    public static func isSubject(_ s: String) -> Bool { SubjectText.isSubject(s) }

    /// A network as one token: `n` and the hex of its bytes, or past 48 bytes `h` and the hex of
    /// its SHA-256 (subjects stay short; two names never share a token).
    public static func networkToken(_ network: String) -> String {
        let bytes = Array(network.utf8)
        return bytes.count <= 48 ? "n" + Crypto.hex(bytes) : "h" + Crypto.hex(Crypto.sha256(bytes))
    }

    /// A peer key (base64 of 32 bytes) as one token: its 64 hex digits.
    public static func keyToken(_ key: String) -> String? {
        guard KeyText.isKey(key), let raw = Base64.decode(key) else { return nil }
        return Crypto.hex(raw)
    }

    public static func key(fromToken token: Substring) -> String? {
        guard token.utf8.count == 64, let raw = Crypto.unhex(String(token)) else { return nil }
        return Base64.std(raw)
    }

    public func peer(_ key: String, network: String) -> String? {
        keyToken(key).map { "\(prefix).\(ClusterSubjects.networkToken(network)).p.\($0)" }
    }

    public func presence(_ key: String, network: String) -> String? {
        keyToken(key).map { "\(prefix).\(ClusterSubjects.networkToken(network)).o.\($0)" }
    }

    public func presenceWildcard(network: String) -> String { "\(prefix).\(ClusterSubjects.networkToken(network)).o.*" }
    public func query(network: String) -> String { "\(prefix).\(ClusterSubjects.networkToken(network)).q" }
    public var inboxWildcard: String { "\(prefix).r.\(instance).>" }
    public var heartbeatWildcard: String { "\(prefix).hb.*" }
    public var heartbeat: String { "\(prefix).hb.\(instance)" }

    /// The reply subject of a routed message: no-responders or "gone" comes back here.
    public func routeReply(worker: Int, sequence: UInt32) -> String { "\(prefix).r.\(instance).m.\(worker).\(sequence)" }
    /// The reply subject of a presence query for one watcher (in `network`).
    public func queryReply(worker: Int, connection: ConnectionID, network: String) -> String {
        "\(prefix).r.\(instance).q.\(worker).\(connection.raw).\(ClusterSubjects.networkToken(network))"
    }
    /// The reply subject of a resynchronization's query: answers go to every watcher of the keys.
    public func resyncReply(network: String) -> String { "\(prefix).r.\(instance).s.\(ClusterSubjects.networkToken(network))" }

    private func keyToken(_ key: String) -> String? { ClusterSubjects.keyToken(key) }

    /// What a subject this instance receives on is about.
    public enum Incoming: Equatable, Sendable {
        /// For a local peer (`P.<net>.p.<key>`), with the network token as written.
        case peer(networkToken: Substring, key: String)
        case presence(networkToken: Substring, key: String)
        case query(networkToken: Substring)
        case routeReply(worker: Int, sequence: UInt32)
        case queryReply(worker: Int, connection: ConnectionID, networkToken: Substring)
        case resyncReply(networkToken: Substring)
        case heartbeat(instance: Substring)
    }

    public func parse(_ subject: Substring) -> Incoming? {
        guard subject.hasPrefix(prefix), subject.dropFirst(prefix.count).first == "." else { return nil }
        let t = subject.dropFirst(prefix.count + 1).split(separator: ".", omittingEmptySubsequences: false)
        switch t.count {
        case 2 where t[0] == "hb": return .heartbeat(instance: t[1])
        case 2 where t[1] == "q": return .query(networkToken: t[0])
        case 3 where t[1] == "p": return ClusterSubjects.key(fromToken: t[2]).map { .peer(networkToken: t[0], key: $0) }
        case 3 where t[1] == "o": return ClusterSubjects.key(fromToken: t[2]).map { .presence(networkToken: t[0], key: $0) }
        case 4 where t[0] == "r" && t[1] == instance && t[2] == "s":
            return .resyncReply(networkToken: t[3])
        case 5 where t[0] == "r" && t[1] == instance && t[2] == "m":
            guard let w = Int(t[3]), w >= 0, w < 1024, let n = UInt32(t[4]) else { return nil }
            return .routeReply(worker: w, sequence: n)
        case 6 where t[0] == "r" && t[1] == instance && t[2] == "q":
            guard let w = Int(t[3]), w >= 0, w < 1024, let n = UInt32(t[4]) else { return nil }
            return .queryReply(worker: w, connection: ConnectionID(n), networkToken: t[5])
        default: return nil
        }
    }
}

/// What instances say to each other besides the routed messages themselves (which travel as the
/// JSON text the recipient gets, always starting with `{`). Text, one line, space-separated.
public enum ClusterPayload: Equatable, Sendable {
    /// On a peer subject: `instance` registered the key at `since` (wall-clock ns); the older
    /// registration closes with `replaced`.
    case claim(since: UInt64, instance: String)
    /// On a presence subject.
    case presence(online: Bool, instance: String)
    /// A query's answer: which of the asked keys `instance` holds.
    case holds(instance: String, keys: [String])
    /// On a reply subject: the peer is not (or no longer) connected there.
    case gone

    public func encoded() -> [UInt8] {
        switch self {
        case .claim(let since, let instance): return Array("c \(since) \(instance)".utf8)
        case .presence(let online, let instance): return Array("\(online ? "1" : "0") \(instance)".utf8)
        case .holds(let instance, let keys): return Array((["h", instance] + keys).joined(separator: " ").utf8)
        case .gone: return Array("g".utf8)
        }
    }

    /// A query is the keys asked about, space-separated (at most `maxQueryKeys`).
    public static let maxQueryKeys = 1024

    public static func query(_ keys: [String]) -> [UInt8] { Array(keys.joined(separator: " ").utf8) }

    public static func parseQuery(_ bytes: UnsafeRawBufferPointer) -> [String] {
        let keys = String(decoding: bytes, as: UTF8.self).split(separator: " ").prefix(maxQueryKeys).map(String.init)
        return keys.filter(KeyText.isKey)
    }

    public static func parse(_ bytes: UnsafeRawBufferPointer) -> ClusterPayload? {
        guard bytes.count <= 64 * 1024 else { return nil }
        let words = String(decoding: bytes, as: UTF8.self).split(separator: " ", omittingEmptySubsequences: false)
        guard let kind = words.first else { return nil }
        switch kind {
        case "c" where words.count == 3:
            guard let since = UInt64(words[1]), ClusterSubjects.isToken(String(words[2])) else { return nil }
            return .claim(since: since, instance: String(words[2]))
        case "1" where words.count == 2, "0" where words.count == 2:
            guard ClusterSubjects.isToken(String(words[1])) else { return nil }
            return .presence(online: kind == "1", instance: String(words[1]))
        case "h" where words.count >= 2:
            guard ClusterSubjects.isToken(String(words[1])) else { return nil }
            let keys = words.dropFirst(2).prefix(maxQueryKeys).map(String.init)
            guard keys.allSatisfy(KeyText.isKey) else { return nil }
            return .holds(instance: String(words[1]), keys: keys)
        case "g" where words.count == 1:
            return .gone
        default:
            return nil
        }
    }
}
