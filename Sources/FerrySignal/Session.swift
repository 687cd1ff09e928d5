import Foundation
import FerryWire
import FerryCore
import FerryRelay

/// A relay a peer may use, with short-lived TURN REST credentials made from its shared secret,
/// and, when it has a native relay (`wgrelay:` URLs), a native-relay credential made from the
/// same secret for this peer's key in its network (docs/relay-protocol.md).
public struct RelayHandout: Sendable {
    public let region: String
    public let urls: [String]
    let secret: String

    public init(region: String, urls: [String], secret: String) {
        self.region = region
        self.urls = urls
        self.secret = secret
    }

    func credentials(peer: String, network: String, now: UInt64, ttl: UInt64) -> JSONValue {
        let username = "\(now + ttl):\(peer)"
        var fields: [(String, JSONValue)] = [("region", .string(region)), ("urls", .array(urls.map { .string($0) })), ("username", .string(username)),
                                             ("credential", .string(Crypto.restPassword(secret: secret, username: username))),
                                             ("expires", .number(Double(now + ttl)))]
        if urls.contains(where: { $0.hasPrefix("wgrelay:") || $0.hasPrefix("wgrelays:") }), let key = Base64.decode(peer), key.count == 32 {
            let token = RelayCredential(expiry: now + ttl, key: WireGuardKey(key), network: network).token
            fields.append(("relay_token", .string(Base64.std(token))))
            fields.append(("relay_key", .string(Base64.std(RelayCredential.integrityKey(secret: secret, token: token)))))
        }
        return .object(fields)
    }
}

/// Limits and wiring of signaling, shared by every session (static after start; a reload makes
/// a new one).
public final class SignalPolicy: @unchecked Sendable {
    public let serverKey: SignalServerKey
    public let tokenSecrets: [String]
    public let jwt: JWTVerifier?
    public let maxPayload: Int
    public let messagesPerSecond: Double
    public let messageBurst: Double
    public let bytesPerSecond: Double
    public let relays: [RelayHandout]
    public let relayTTL: UInt64
    public let pingInterval: Int
    /// What a connection may send before it authenticates (`signal.preauth_messages`,
    /// `signal.preauth_bytes`): far below an authenticated peer's rates, checked before a byte
    /// is parsed; past it the connection is closed.
    public let preauthMessages: Int
    public let preauthBytes: Int

    public init(serverKey: SignalServerKey, tokenSecrets: [String], jwt: JWTVerifier?, maxPayload: Int, messagesPerSecond: Double,
                messageBurst: Double, bytesPerSecond: Double, relays: [RelayHandout], relayTTL: UInt64, pingInterval: Int,
                preauthMessages: Int = 4, preauthBytes: Int = 32768) {
        self.preauthMessages = preauthMessages
        self.preauthBytes = preauthBytes
        self.serverKey = serverKey
        self.tokenSecrets = tokenSecrets
        self.jwt = jwt
        self.maxPayload = maxPayload
        self.messagesPerSecond = messagesPerSecond
        self.messageBurst = messageBurst
        self.bytesPerSecond = bytesPerSecond
        self.relays = relays
        self.relayTTL = relayTTL
        self.pingInterval = pingInterval
    }
}

/// What the connection must do after a message.
public enum SignalAction {
    /// Send this JSON text to the connection itself.
    case reply([UInt8])
    /// Authentication succeeded: register (replacing an older connection with the key), then
    /// send `welcome`.
    case register(peer: String, network: String, welcome: [UInt8])
    /// Deliver `message` (already stamped with `from`) to `to` in the sender's network; if the
    /// peer is absent, answer with `offline` instead.
    case route(to: String, message: [UInt8], offline: [UInt8])
    /// Presence of these keys (each once), and the request's `id` for an error answer.
    case subscribe([String], ref: JSONValue?)
    case unsubscribe([String])
    /// A message was dropped for a reason worth counting.
    case dropped(SignalErrorCode)
    case close(WebSocket.CloseCode, String)
}

/// One signaling connection's state machine (docs/signaling.md): challenge, authentication,
/// then validated messages turned into routing actions. Pure: time is passed in.
public final class SignalSession {
    public enum State: Equatable {
        case awaitingAuth
        case authenticated(peer: String, network: String)
        case closed
    }

    public private(set) var state: State = .awaitingAuth
    public let challenge: [UInt8]
    private let policy: SignalPolicy
    private var messages: TokenBucket
    private var bytes: TokenBucket
    private var expiry: UInt64 = 0
    private var preauthMessages = 0
    private var preauthBytes = 0
    /// What a routed message may carry besides its payload (`v`, `type`, `to`, `id`, and the
    /// `from` the server adds): the bound on the message as forwarded is `max_payload` plus this.
    public static let envelopeAllowance = 1024
    /// An `id` echoed as `ref` in an error: numbers, and strings up to this many bytes; a larger
    /// one is left out (a client must not make the server send back what it sent).
    public static let maxRef = 128
    /// Relayed message kinds, forwarded opaque to the recipient.
    public static let routed: Set<String> = ["offer", "answer", "candidate", "end_of_candidates", "bye"]

    public init(policy: SignalPolicy, now: UInt64) {
        self.policy = policy
        challenge = Crypto.randomBytes(32)
        messages = TokenBucket(capacity: policy.messageBurst, now: now)
        bytes = TokenBucket(capacity: policy.bytesPerSecond * 2, now: now)
    }

    public var peer: String? {
        if case .authenticated(let p, _) = state { return p }
        return nil
    }

    public var network: String? {
        if case .authenticated(_, let n) = state { return n }
        return nil
    }

    /// The first message, sent on connect.
    public func hello() -> [UInt8] {
        JSONValue.object([("v", .number(1)), ("type", .string("hello")), ("server_key", .string(Base64.std(policy.serverKey.publicKey))),
                          ("challenge", .string(Base64.std(challenge))), ("ping_interval", .number(Double(policy.pingInterval)))]).encoded()
    }

    public static func error(_ code: SignalErrorCode, _ message: String, ref: JSONValue? = nil) -> [UInt8] {
        var members: [(String, JSONValue)] = [("v", .number(1)), ("type", .string("error")), ("code", .string(code.rawValue)),
                                              ("message", .string(message))]
        switch ref {
        case .number?, .bool?: members.append(("ref", ref!))
        case .string(let s)? where s.utf8.count <= maxRef: members.append(("ref", ref!))
        default: break
        }
        return JSONValue.object(members).encoded()
    }

    /// Encodes a flat message (tests and clients): values are strings, numbers, bools or arrays of strings.
    public static func json(_ o: [String: Any]) -> [UInt8] {
        func value(_ v: Any) -> JSONValue {
            switch v {
            case let s as String: return .string(s)
            case let b as Bool: return .bool(b)
            case let i as Int: return .number(Double(i))
            case let u as UInt64: return .number(Double(u))
            case let d as Double: return .number(d)
            case let a as [String]: return .array(a.map { .string($0) })
            case let a as [Any]: return .array(a.map(value))
            default: return .null
            }
        }
        return JSONValue.object(o.sorted { $0.key < $1.key }.map { ($0.key, value($0.value)) }).encoded()
    }

    /// Handles one text message. `now` is monotonic nanoseconds, `wallNow` Unix seconds.
    public func receive(_ text: [UInt8], now: UInt64, wallNow: UInt64) -> [SignalAction] {
        guard state != .closed else { return [] }
        if state == .awaitingAuth {
            preauthMessages += 1
            preauthBytes += text.count
            guard preauthMessages <= policy.preauthMessages, preauthBytes <= policy.preauthBytes else {
                state = .closed
                let why = "authenticate first: at most \(policy.preauthMessages) messages and \(policy.preauthBytes) bytes before auth"
                return [.reply(SignalSession.error(.notAuthenticated, why)), .dropped(.notAuthenticated), .close(.unauthorized, "too much before auth")]
            }
        }
        guard let object = JSONValue.parse(text), case .object = object else {
            return [.reply(SignalSession.error(.badJSON, "not a JSON object")), .dropped(.badJSON)]
        }
        let ref = object["id"]
        guard object["v"]?.number == 1 else {
            return [.reply(SignalSession.error(.unsupportedVersion, "\"v\" must be 1", ref: ref)), .dropped(.unsupportedVersion)]
        }
        guard let type = object["type"]?.string else {
            return [.reply(SignalSession.error(.badMessage, "missing \"type\"", ref: ref)), .dropped(.badMessage)]
        }
        switch state {
        case .awaitingAuth:
            guard type == "auth" else {
                return [.reply(SignalSession.error(.notAuthenticated, "authenticate first", ref: ref)), .dropped(.notAuthenticated)]
            }
            return authenticate(object, wallNow: wallNow)
        case .authenticated(let peer, _):
            if wallNow >= expiry {
                state = .closed
                return [.reply(SignalSession.error(.tokenExpired, "authorization expired")), .close(.unauthorized, "token expired")]
            }
            guard admit(bytes: text.count, now: now) else {
                return [.reply(SignalSession.error(.rateLimited, "slow down", ref: ref)), .dropped(.rateLimited)]
            }
            return message(type, object, text: text, from: peer, ref: ref)
        case .closed:
            return []
        }
    }

    private func authenticate(_ o: JSONValue, wallNow: UInt64) -> [SignalAction] {
        func fail(_ code: SignalErrorCode, _ why: String) -> [SignalAction] {
            state = .closed
            return [.reply(SignalSession.error(code, why)), .dropped(code), .close(.unauthorized, why)]
        }
        guard let peer = o["peer_key"]?.string, KeyText.isKey(peer), let peerKey = Base64.decode(peer), peerKey.count == 32 else {
            return fail(.badMessage, "peer_key must be a base64 X25519 public key")
        }
        guard let proofText = o["proof"]?.string, let proof = Base64.decode(proofText),
              policy.serverKey.verify(proof: proof, peerPublicKey: peerKey, challenge: challenge) else {
            return fail(.badProof, "the proof does not match the key")
        }
        guard let token = o["token"]?.string, !token.isEmpty else { return fail(.authFailed, "missing token") }
        var result: Result<SignalIdentity, SignalErrorCode> = .failure(.authFailed)
        if token.hasPrefix("ferry1.") {
            if !policy.tokenSecrets.isEmpty { result = SignalToken.verify(token, secrets: policy.tokenSecrets, peer: peer, now: wallNow) }
        } else if let jwt = policy.jwt {
            result = jwt.verify(token, peer: peer, now: wallNow)
        }
        let identity: SignalIdentity
        switch result {
        case .failure(let code): return fail(code, code == .tokenExpired ? "token expired" : "token refused")
        case .success(let i): identity = i
        }
        state = .authenticated(peer: peer, network: identity.network)
        expiry = identity.expiry
        let relays = policy.relays.map { $0.credentials(peer: peer, network: identity.network, now: wallNow, ttl: policy.relayTTL) }
        let welcome = JSONValue.object([("v", .number(1)), ("type", .string("welcome")), ("peer_key", .string(peer)),
                                        ("network", .string(identity.network)), ("expires", .number(Double(identity.expiry))),
                                        ("relays", .array(relays))]).encoded()
        return [.register(peer: peer, network: identity.network, welcome: welcome)]
    }

    private func message(_ type: String, _ o: JSONValue, text: [UInt8], from peer: String, ref: JSONValue?) -> [SignalAction] {
        switch type {
        case _ where SignalSession.routed.contains(type):
            guard let to = o["to"]?.string, KeyText.isKey(to) else {
                return [.reply(SignalSession.error(.badMessage, "\"to\" must be a peer key", ref: ref)), .dropped(.badMessage)]
            }
            guard o["from"] == nil else {
                return [.reply(SignalSession.error(.badMessage, "\"from\" is set by the server", ref: ref)), .dropped(.badMessage)]
            }
            let payload = o["payload"]
            if let p = payload, p.string == nil {
                return [.reply(SignalSession.error(.badMessage, "\"payload\" must be a string", ref: ref)), .dropped(.badMessage)]
            }
            if let p = payload?.string, p.utf8.count > policy.maxPayload {
                return [.reply(SignalSession.error(.payloadTooLarge, "payload over \(policy.maxPayload) bytes", ref: ref)), .dropped(.payloadTooLarge)]
            }
            // What is routed is the message as written (members the server does not know
            // included), so that is what the bound applies to.
            if text.count > policy.maxPayload + SignalSession.envelopeAllowance {
                let bound = policy.maxPayload + SignalSession.envelopeAllowance
                return [.reply(SignalSession.error(.payloadTooLarge, "message over \(bound) bytes", ref: ref)), .dropped(.payloadTooLarge)]
            }
            let offline = SignalSession.error(.peerOffline, "\(to) is not connected", ref: ref ?? .string(to))
            return [.route(to: to, message: SignalSession.stamp(text, from: peer), offline: offline)]
        case "subscribe", "unsubscribe":
            guard let list = o["peers"]?.array, list.count <= 1024, let peers = Optional(list.compactMap(\.string)),
                  peers.count == list.count, peers.allSatisfy(KeyText.isKey) else {
                return [.reply(SignalSession.error(.badMessage, "\"peers\" must be up to 1024 peer keys", ref: ref)), .dropped(.badMessage)]
            }
            // Each key once, in order: a list of one key 1,024 times is one subscription.
            var seen = Set<String>()
            let unique = peers.filter { seen.insert($0).inserted }
            return [type == "subscribe" ? .subscribe(unique, ref: ref) : .unsubscribe(unique)]
        case "ping":
            return [.reply(Array(#"{"v":1,"type":"pong"}"#.utf8))]
        case "auth":
            return [.reply(SignalSession.error(.badMessage, "already authenticated", ref: ref)), .dropped(.badMessage)]
        default:
            return [.reply(SignalSession.error(.unknownType, "unknown type \"\(type)\"", ref: ref)), .dropped(.unknownType)]
        }
    }

    /// Per-peer message and byte rate limits: a message passes only if both buckets hold it.
    private func admit(bytes size: Int, now: UInt64) -> Bool {
        messages.refill(rate: policy.messagesPerSecond, capacity: policy.messageBurst, now: now)
        bytes.refill(rate: policy.bytesPerSecond, capacity: policy.bytesPerSecond * 2, now: now)
        guard messages.has(1), bytes.has(Double(size)) else { return false }
        messages.spend(1)
        bytes.spend(Double(size))
        return true
    }

    public func closed() { state = .closed }

    /// A presence event for subscribers.
    public static func presence(_ peer: String, online: Bool) -> [UInt8] {
        JSONValue.object([("v", .number(1)), ("type", .string(online ? "peer_online" : "peer_offline")), ("peer", .string(peer))]).encoded()
    }

    /// The validated message text with the server's `"from"` spliced in after the opening brace:
    /// everything the sender wrote is forwarded as written, nothing is re-encoded.
    static func stamp(_ text: [UInt8], from peer: String) -> [UInt8] {
        var i = 0
        while i < text.count && text[i] != UInt8(ascii: "{") { i += 1 }
        var out: [UInt8] = []
        out.reserveCapacity(text.count + 60)
        out += text[0...i]
        out += Array("\"from\":".utf8)
        JSONValue.encodeString(peer, into: &out)
        out.append(UInt8(ascii: ","))
        out += text[(i + 1)...]
        return out
    }
}
