import FerryCore
import FerryWire

/// How a control message on the native relay's port ended (`ferry_relay_binds_total{result}`,
/// and `stun_binding` for plain STUN Binding requests).
public enum BindResult: Int, CounterReason {
    case waiting, active, unbound, challenged, staleCookie, wrongSource, badCredential, expired, quota, rateLimited, malformed, stunBinding

    public var label: String {
        switch self {
        case .waiting: return "waiting"
        case .active: return "active"
        case .unbound: return "unbound"
        case .challenged: return "challenged"
        case .staleCookie: return "stale_cookie"
        case .wrongSource: return "wrong_source"
        case .badCredential: return "bad_credential"
        case .expired: return "expired"
        case .quota: return "quota"
        case .rateLimited: return "rate_limited"
        case .malformed: return "malformed"
        case .stunBinding: return "stun_binding"
        }
    }
}

/// The native relay's control plane on one worker (docs/relay-protocol.md): STUN Binding (so a
/// peer learns, from WireGuard's own port, the address the relay sees) and FERRY-BIND with its
/// challenge. Pure: times and the reply buffer are handed in.
///
/// Replies are never larger than what a spoofed source could make the relay send for free: a
/// request without a credential and a partner, or over the bind rate, gets no answer at all.
public struct RelayControl {
    public var cookies: BindCookies
    /// The relay's shared secrets (`turn.static_auth_secrets`): any of them may have minted a credential.
    public var secrets: [[UInt8]]
    private var rate: TokenBucket
    private let ratePerSecond: Double

    public init(cookies: BindCookies, secrets: [String], bindsPerSecond: Double, now: UInt64) {
        self.cookies = cookies
        self.secrets = secrets.map { Array($0.utf8) }
        ratePerSecond = bindsPerSecond
        rate = TokenBucket(capacity: bindsPerSecond, now: now)
    }

    /// Answers the control message `m` from `source` into `reply`; returns the reply's length
    /// (0: no answer) and what happened. `now` is monotonic nanoseconds, `wall` Unix seconds
    /// (credential expiry). A stream end (`RelayStreamEnd`) is challenged like any source: its
    /// cookie is made for its connection, so a bind captured on the way (binds cross networks in
    /// the clear) and replayed over the replayer's own stream cannot move an end there.
    public mutating func handle(_ m: UnsafeRawBufferPointer, from source: SocketAddress, now: UInt64, wall: UInt64,
                                sessions: inout RelaySessions, reply: UnsafeMutableRawBufferPointer) -> (Int, BindResult) {
        guard case .success(let msg) = STUNMessage.parse(m), msg.messageClass == .request else { return (0, .malformed) }
        if msg.method == STUN.Method.binding {
            var w = STUNWriter(into: reply, method: STUN.Method.binding, class: .success, transactionID: msg.transactionID)
            w.append(RelayProtocol.Attribute.xorMappedAddress, xorAddress: source)
            finish(&w)
            return (w.count, .stunBinding)
        }
        guard msg.method == RelayProtocol.bindMethod, let credential = msg.attribute(RelayProtocol.Attribute.credential),
              let partnerBytes = msg.attribute(RelayProtocol.Attribute.partner), partnerBytes.count == 32 else { return (0, .malformed) }
        guard rate.take(1, rate: ratePerSecond, capacity: ratePerSecond, now: now) else { return (0, .rateLimited) }
        let seconds = UInt32(truncatingIfNeeded: now / 1_000_000_000)
        if cookies.needsRotation(now: seconds) { cookies.rotate(now: seconds, key: Crypto.randomBytes(32)) }
        guard let cookie = msg.attribute(RelayProtocol.Attribute.cookie) else {
            return (challenge(msg, source, seconds, reply), .challenged)
        }
        switch cookies.check(cookie, from: source, now: seconds) {
        case .failure(.wrongSource): return (challenge(msg, source, seconds, reply), .wrongSource)
        case .failure: return (challenge(msg, source, seconds, reply), .staleCookie)
        case .success: break
        }
        let identity: RelayCredential
        switch RelayCredential.parse(credential, now: wall) {
        case .failure(.expired): return (error(msg, .forbidden, reply), .expired)
        case .failure: return (error(msg, .forbidden, reply), .badCredential)
        case .success(let c): identity = c
        }
        // The token is public; the integrity key only its holder and the relays have.
        guard let key = secrets.lazy.map({ RelayCredential.integrityKey(secret: $0, token: credential) })
            .first(where: { k in k.withUnsafeBytes { msg.verifyIntegritySHA256(key: $0) } }) else {
            return (error(msg, .forbidden, reply), .badCredential)
        }
        let partner = WireGuardKey(partnerBytes)
        if msg.uint32(STUN.Attribute.lifetime) == 0 {
            sessions.unbind(network: identity.network, key: identity.key, partner: partner)
            return (success(msg, source, state: 0, lifetime: 0, key: key, reply), .unbound)
        }
        switch sessions.bind(network: identity.network, key: identity.key, partner: partner, address: source, now: seconds) {
        case .waiting: return (success(msg, source, state: 0, lifetime: sessions.limits.idleTimeout, key: key, reply), .waiting)
        case .active: return (success(msg, source, state: 1, lifetime: sessions.limits.idleTimeout, key: key, reply), .active)
        case .refused(.samePeer): return (error(msg, .badRequest, reply), .malformed)
        case .refused: return (error(msg, .quota, reply), .quota)
        }
    }

    private func challenge(_ msg: STUNMessage, _ source: SocketAddress, _ now: UInt32, _ reply: UnsafeMutableRawBufferPointer) -> Int {
        var w = STUNWriter(into: reply, method: RelayProtocol.bindMethod, class: .error, transactionID: msg.transactionID)
        w.appendErrorCode(RelayProtocol.ErrorCode.challenge.rawValue, reason: RelayProtocol.ErrorCode.challenge.reason)
        cookies.make(for: source, now: now).withUnsafeBytes { w.append(RelayProtocol.Attribute.cookie, bytes: $0) }
        finish(&w)
        return w.count
    }

    private func error(_ msg: STUNMessage, _ code: RelayProtocol.ErrorCode, _ reply: UnsafeMutableRawBufferPointer) -> Int {
        var w = STUNWriter(into: reply, method: RelayProtocol.bindMethod, class: .error, transactionID: msg.transactionID)
        w.appendErrorCode(code.rawValue, reason: code.reason)
        finish(&w)
        return w.count
    }

    /// A success, signed with the credential's key: the client knows the relay made it.
    private func success(_ msg: STUNMessage, _ source: SocketAddress, state: UInt32, lifetime: UInt32, key: [UInt8],
                         _ reply: UnsafeMutableRawBufferPointer) -> Int {
        var w = STUNWriter(into: reply, method: RelayProtocol.bindMethod, class: .success, transactionID: msg.transactionID)
        w.append(RelayProtocol.Attribute.xorMappedAddress, xorAddress: source)
        w.append(STUN.Attribute.lifetime, uint32: lifetime)
        w.append(RelayProtocol.Attribute.sessionState, uint32: state)
        key.withUnsafeBytes { w.appendMessageIntegritySHA256(key: $0) }
        finish(&w)
        return w.count
    }

    private func finish(_ w: inout STUNWriter) {
        w.appendFingerprint()
    }
}
