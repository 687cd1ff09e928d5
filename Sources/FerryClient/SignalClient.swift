import FerryCore
import FerrySignal
import FerryTLS
import FerryWire

/// The client side of Ferry's signaling protocol (docs/signaling.md) as a pure state machine:
/// the WebSocket client handshake and masked frames, `hello` → `auth` (the X25519 proof) →
/// `welcome`, routed messages, presence, pings, and a classification of how a session ended that
/// `ReconnectPolicy` turns into "retry after" or "stop". The caller owns the socket (TCP or TLS)
/// and feeds bytes in; everything to write comes back as bytes.
public struct SignalClient {
    public struct Relay: Equatable, Sendable {
        public var region: String
        public var urls: [String]
        public var username: String
        public var credential: String
        public var expires: UInt64
        /// The native-relay credential for `wgrelay:` URLs (empty when none are handed out).
        public var relayToken: [UInt8] = []
        public var relayKey: [UInt8] = []

        public init(region: String, urls: [String], username: String, credential: String, expires: UInt64,
                    relayToken: [UInt8] = [], relayKey: [UInt8] = []) {
            self.region = region
            self.urls = urls
            self.username = username
            self.credential = credential
            self.expires = expires
            self.relayToken = relayToken
            self.relayKey = relayKey
        }
    }

    public enum Ending: Equatable, Sendable {
        /// A newer connection authenticated with the same key (close 4000): do not fight it.
        case replaced
        /// The server is shutting down (close 1001): reconnect at once, maybe elsewhere.
        case draining
        /// Refused at `auth` (`auth_failed`, `bad_proof`, `wrong_network`) or later
        /// `token_expired`: retrying with the same token cannot help.
        case refused(code: String)
        /// The WebSocket upgrade was refused (an HTTP status), or the server broke the protocol.
        case handshake(String)
        /// Any other close (code 1006 when the connection just dropped).
        case closed(code: UInt16)
    }

    public enum Event: Equatable, Sendable {
        case welcome(network: String, expires: UInt64, relays: [Relay])
        /// A routed message (offer, answer, candidate, end_of_candidates, bye) from `from`.
        case message(type: String, from: String, payload: String?, body: JSONValue)
        case peerOnline(String), peerOffline(String)
        /// A non-fatal error answer (`peer_offline`, `rate_limited`, …) and the message's id.
        case error(code: String, ref: JSONValue?)
        case ended(Ending)
    }

    public enum Phase: Equatable, Sendable { case handshaking, awaitingHello, authenticating, ready, ended }

    public let publicKey: String
    let privateKey: [UInt8]
    let token: String
    let host: String
    let path: String
    let wsKey: [UInt8]
    public private(set) var phase = Phase.handshaking
    private var input: [UInt8] = []
    private var fragments: [UInt8] = []
    private var lastError: String?
    /// Whether a fragmented text message is being assembled (a continuation frame needs one).
    private var assembling = false
    public static let maxMessage = 1 << 20

    /// `webSocketKey`: the 16-byte Sec-WebSocket-Key (random unless a test or fuzz target fixes it).
    public init?(privateKey: [UInt8], token: String, host: String, path: String = "/v1/signal",
                 webSocketKey: [UInt8] = Crypto.randomBytes(16)) {
        guard let pub = X25519.publicKey(privateKey: privateKey) else { return nil }
        self.privateKey = privateKey
        publicKey = Base64.std(pub)
        self.token = token
        self.host = host
        self.path = path
        wsKey = webSocketKey
    }

    /// The HTTP upgrade request: the first bytes to write.
    public func start() -> [UInt8] { WebSocket.clientRequest(host: host, path: path, key: wsKey) }

    /// RFC 6455 §5.3: each frame's masking key from a strong source of entropy (the system's
    /// CSPRNG, getrandom), unpredictable to anyone who sees earlier frames.
    static func maskKey() -> UInt32 {
        var g = SystemRandomNumberGenerator()
        return UInt32(truncatingIfNeeded: g.next())
    }

    private mutating func frame(_ opcode: WebSocket.Opcode, _ payload: [UInt8]) -> [UInt8] {
        WebSocket.encode(opcode, payload, mask: Self.maskKey())
    }

    /// A JSON message as a masked text frame.
    public mutating func send(_ message: JSONValue) -> [UInt8] { frame(.text, message.encoded()) }

    /// A routed message to `to`; `payload` is opaque (sealed, see `SealedEnvelope`).
    public mutating func route(_ type: String, to: String, payload: String?, id: JSONValue? = nil) -> [UInt8] {
        var members: [(String, JSONValue)] = [("v", .number(1)), ("type", .string(type)), ("to", .string(to))]
        if let payload { members.append(("payload", .string(payload))) }
        if let id { members.append(("id", id)) }
        return send(.object(members))
    }

    public mutating func subscribe(_ peers: [String]) -> [UInt8] {
        send(.object([("v", .number(1)), ("type", .string("subscribe")), ("peers", .array(peers.map { .string($0) }))]))
    }

    /// A polite end: a close frame (1000).
    public mutating func close() -> [UInt8] {
        phase = .ended
        return WebSocket.close(.normal, mask: Self.maskKey())
    }

    /// The connection dropped without a close frame.
    public mutating func connectionLost() -> Event? {
        guard phase != .ended else { return nil }
        phase = .ended
        return .ended(ending(closeCode: 1006))
    }

    /// Bytes from the server; returns the events and the bytes to write.
    public mutating func receive(_ bytes: some Collection<UInt8>) -> (events: [Event], send: [UInt8]) {
        guard phase != .ended else { return ([], []) }
        input += bytes
        var events: [Event] = [], out: [UInt8] = []
        if phase == .handshaking {
            switch input.withUnsafeBytes({ WebSocket.checkResponse($0, key: wsKey) }) {
            case .incomplete: return ([], [])
            case .refused(let status, let reason):
                phase = .ended
                return ([.ended(.handshake(status == 0 ? reason : "HTTP \(status): \(reason)"))], [])
            case .upgraded(let consumed):
                input.removeFirst(consumed)
                phase = .awaitingHello
            }
        }
        while phase != .ended {
            let parsed = input.withUnsafeBytes { WebSocket.parse($0, maxPayload: Self.maxMessage, fromServer: true) }
            guard case .frame(let f) = parsed else {
                if case .incomplete = parsed { break }
                phase = .ended
                events.append(.ended(.handshake("bad frame from the server")))
                break
            }
            var payload = Array(input[f.payloadStart..<f.frameLength])
            if let key = f.maskKey { payload.withUnsafeMutableBytes { WebSocket.unmask($0, key: key) } }
            input.removeFirst(f.frameLength)
            switch f.opcode {
            case .ping: out += frame(.pong, payload)
            case .pong: break
            case .close:
                let code = payload.count >= 2 ? UInt16(payload[0]) << 8 | UInt16(payload[1]) : 1005
                out += WebSocket.close(.normal, mask: Self.maskKey())
                phase = .ended
                events.append(.ended(ending(closeCode: code)))
            case .binary: break
            case .text, .continuation:
                // One message at a time (RFC 6455 §5.4): a continuation only inside one, a new
                // text frame only outside, and the whole message within maxMessage, not just
                // each frame.
                guard (f.opcode == .text) != assembling, fragments.count + payload.count <= Self.maxMessage else {
                    phase = .ended
                    events.append(.ended(.handshake(f.opcode == .continuation && !assembling ? "continuation frame outside a message"
                        : assembling && f.opcode == .text ? "text frame inside a fragmented message"
                        : "message over \(Self.maxMessage) bytes")))
                    break
                }
                fragments += payload
                assembling = !f.fin
                guard f.fin else { continue }
                let text = fragments
                fragments = []
                let (e, s) = handle(text)
                events += e
                out += s
            }
        }
        return (events, out)
    }

    private func ending(closeCode code: UInt16) -> Ending {
        switch (code, lastError) {
        case (4000, _), (_, "replaced"?): return .replaced
        case (1001, _), (_, "draining"?): return .draining
        case (4001, let e?): return .refused(code: e)
        default: return .closed(code: code)
        }
    }

    private mutating func handle(_ text: [UInt8]) -> ([Event], [UInt8]) {
        guard let m = JSONValue.parse(text), let type = m["type"]?.string else { return ([], []) }
        switch type {
        case "hello":
            guard phase == .awaitingHello, let server = m["server_key"]?.string.flatMap(Base64.decode),
                  let challenge = m["challenge"]?.string.flatMap(Base64.decode),
                  let proof = SignalServerKey.proof(peerPrivateKey: privateKey, serverPublicKey: server, challenge: challenge) else {
                return ([], [])
            }
            phase = .authenticating
            return ([], send(.object([("v", .number(1)), ("type", .string("auth")), ("peer_key", .string(publicKey)),
                                      ("proof", .string(Base64.std(proof))), ("token", .string(token))])))
        case "welcome":
            phase = .ready
            let relays = (m["relays"]?.array ?? []).map { r in
                Relay(region: r["region"]?.string ?? "", urls: (r["urls"]?.array ?? []).compactMap(\.string),
                      username: r["username"]?.string ?? "", credential: r["credential"]?.string ?? "",
                      expires: UInt64(r["expires"]?.number ?? 0),
                      relayToken: r["relay_token"]?.string.flatMap(Base64.decode) ?? [],
                      relayKey: r["relay_key"]?.string.flatMap(Base64.decode) ?? [])
            }
            return ([.welcome(network: m["network"]?.string ?? "", expires: UInt64(m["expires"]?.number ?? 0), relays: relays)], [])
        case "peer_online", "peer_offline":
            guard let peer = m["peer"]?.string else { return ([], []) }
            return ([type == "peer_online" ? .peerOnline(peer) : .peerOffline(peer)], [])
        case "error":
            let code = m["code"]?.string ?? "unknown"
            lastError = code
            return ([.error(code: code, ref: m["ref"])], [])
        case "pong": return ([], [])
        default:
            guard let from = m["from"]?.string else { return ([], []) }
            return ([.message(type: type, from: from, payload: m["payload"]?.string, body: m)], [])
        }
    }
}

/// When to reconnect after a session ended (docs/cli.md, `ferry tunnel`): a replaced session or
/// a refused token stops (another agent holds the key, or the token must change); a draining
/// server is retried at once; anything else backs off exponentially from 0.5 s to 30 s with ±20 %
/// jitter, and the backoff starts over once a session has stayed up for a minute.
public struct ReconnectPolicy: Sendable {
    public static let base: UInt64 = 500_000_000, cap: UInt64 = 30_000_000_000, stable: UInt64 = 60_000_000_000
    public private(set) var attempts = 0
    private var rng: SplitMix64

    public init(seed: UInt64 = UInt64.random(in: 0...UInt64.max)) { rng = SplitMix64(seed: seed) }

    /// The delay before the next attempt, or nil to stop. `upFor`: how long the session lasted.
    public mutating func delay(after ending: SignalClient.Ending, upFor: UInt64) -> UInt64? {
        if upFor >= Self.stable { attempts = 0 }
        switch ending {
        case .replaced, .refused: return nil
        case .draining:
            attempts = 0
            return rng.next() % 250_000_000
        case .handshake, .closed:
            let raw = min(Self.cap, Self.base << UInt64(min(attempts, 16)))
            attempts += 1
            let jitter = raw / 5
            return raw - jitter + rng.next() % (2 * jitter + 1)
        }
    }
}

/// Several signaling servers: after a session ends, the next server is tried at once until each
/// has been tried since the last session that lasted (`ReconnectPolicy.stable`); then the
/// backoff applies to the round.
public struct FailoverRound: Sendable {
    let servers: Int
    private var tried = 0

    public init(servers: Int) { self.servers = servers }

    /// True when the next attempt goes to a server not yet tried in this round.
    public mutating func next(upFor: UInt64) -> Bool {
        if upFor >= ReconnectPolicy.stable { tried = 0 }
        tried += 1
        return servers > 1 && tried % servers != 0
    }
}
