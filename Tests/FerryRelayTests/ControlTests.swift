import Testing
import FerryCore
import FerryWire
@testable import FerryRelay

/// FERRY-BIND as a client sees it: challenge, bind, the partner's bind, refresh, unbind.
@Suite struct Control {
    final class Relay {
        var control: RelayControl
        var sessions: RelaySessions
        var now: UInt64 = 1_000 * 1_000_000_000
        let wall: UInt64 = 1_800_000_000
        let secret = "relay-secret"

        init(limits: RelaySessions.Limits = RelaySessions.Limits(), bindsPerSecond: Double = 100) {
            control = RelayControl(cookies: BindCookies(now: 1000, key: Crypto.randomBytes(32)), secrets: ["old", secret],
                                   bindsPerSecond: bindsPerSecond, now: 1_000 * 1_000_000_000)
            sessions = RelaySessions(limits: limits)
        }

        /// A token and the key signaling would hand out with it.
        func credential(_ p: TestPeer, network: String = "acme", expiry: UInt64? = nil, secret: String? = nil) -> Credential {
            let token = RelayCredential(expiry: expiry ?? wall + 3600, key: p.wg, network: network).token
            return Credential(token: token, key: RelayCredential.integrityKey(secret: secret ?? self.secret, token: token))
        }

        func send(_ m: [UInt8], from: SocketAddress) -> ([UInt8], BindResult) {
            var reply = [UInt8](repeating: 0, count: 1500)
            let (n, result) = m.withUnsafeBytes { mb in
                reply.withUnsafeMutableBytes { control.handle(mb, from: from, now: now, wall: wall, sessions: &sessions, reply: $0) }
            }
            return (Array(reply[0..<n]), result)
        }

        func bindRequest(credential: Credential?, partner: [UInt8]?, cookie: [UInt8]? = nil, lifetime: UInt32? = nil) -> [UInt8] {
            STUNWriter.build(method: RelayProtocol.bindMethod, class: .request) { w in
                credential?.token.withUnsafeBytes { w.append(RelayProtocol.Attribute.credential, bytes: $0) }
                partner?.withUnsafeBytes { w.append(RelayProtocol.Attribute.partner, bytes: $0) }
                cookie?.withUnsafeBytes { w.append(RelayProtocol.Attribute.cookie, bytes: $0) }
                if let lifetime { w.append(STUN.Attribute.lifetime, uint32: lifetime) }
                credential?.key.withUnsafeBytes { w.appendMessageIntegritySHA256(key: $0) }
            }
        }

        /// The client's two steps: ask, take the cookie, ask again.
        func bind(_ p: TestPeer, to partner: TestPeer, from: SocketAddress? = nil, credential: Credential? = nil, lifetime: UInt32? = nil) -> (BindResult, STUNFields?) {
            let from = from ?? p.address
            let cred = credential ?? self.credential(p)
            let (challenge, r1) = send(bindRequest(credential: cred, partner: partner.key), from: from)
            guard r1 == .challenged, let cookie = STUNFields(challenge)?.cookie else { return (r1, nil) }
            let (answer, r2) = send(bindRequest(credential: cred, partner: partner.key, cookie: cookie, lifetime: lifetime), from: from)
            return (r2, STUNFields(answer))
        }
    }

    struct Credential {
        let token: [UInt8]
        let key: [UInt8]
    }

    /// The fields of a reply the tests look at.
    struct STUNFields {
        let cls: STUNClass
        let code: Int?
        let cookie: [UInt8]?
        let mapped: SocketAddress?
        let state: UInt32?
        init?(_ bytes: [UInt8]) {
            guard let f = bytes.withUnsafeBytes({ b -> STUNFields? in
                guard case .success(let m) = STUNMessage.parse(b) else { return nil }
                return STUNFields(cls: m.messageClass, code: m.errorCode()?.code, cookie: m.attribute(RelayProtocol.Attribute.cookie).map { Array($0) },
                                  mapped: m.xorAddress(RelayProtocol.Attribute.xorMappedAddress), state: m.uint32(RelayProtocol.Attribute.sessionState))
            }) else { return nil }
            self = f
        }
        init(cls: STUNClass, code: Int?, cookie: [UInt8]?, mapped: SocketAddress?, state: UInt32?) {
            self.cls = cls; self.code = code; self.cookie = cookie; self.mapped = mapped; self.state = state
        }
    }

    let a = TestPeer("203.0.113.1:51820"), b = TestPeer("198.51.100.2:40000")

    @Test func bothSidesBindThroughTheChallengeAndTheSessionForms() {
        let relay = Relay()
        let (r1, f1) = relay.bind(a, to: b)
        #expect(r1 == .waiting && f1?.state == 0 && f1?.mapped == a.address && f1?.cls == .success)
        let (r2, f2) = relay.bind(b, to: a)
        #expect(r2 == .active && f2?.state == 1)
        #expect(relay.sessions.activeCount == 1 && relay.sessions.sessionCount == 1)
        // A refresh (the same bind again) changes nothing; LIFETIME 0 unbinds one side.
        #expect(relay.bind(a, to: b).0 == .active)
        #expect(relay.bind(a, to: b, lifetime: 0).0 == .unbound)
        #expect(relay.sessions.activeCount == 0 && relay.sessions.sessionCount == 1)
        #expect(relay.bind(b, to: a, lifetime: 0).0 == .unbound)
        #expect(relay.sessions.sessionCount == 0)
    }

    @Test func aCookieFromAnotherSourceOrTooOldIsChallengedAgain() {
        let relay = Relay()
        let cred = relay.credential(a)
        let (challenge, _) = relay.send(relay.bindRequest(credential: cred, partner: b.key), from: a.address)
        let cookie = STUNFields(challenge)!.cookie!
        // A spoofer replaying a's exchange from its own address.
        let spoofer = SocketAddress("192.0.2.66:51820")!
        let (again, r) = relay.send(relay.bindRequest(credential: cred, partner: b.key, cookie: cookie), from: spoofer)
        #expect(r == .wrongSource && STUNFields(again)?.code == 401 && STUNFields(again)?.cookie != nil)
        // With the cookie it now got, the spoofer still lacks the key to sign a bind.
        let stolen = Credential(token: cred.token, key: Crypto.randomBytes(32))
        #expect(relay.send(relay.bindRequest(credential: stolen, partner: b.key, cookie: STUNFields(again)!.cookie!), from: spoofer).1 == .badCredential)
        relay.now += UInt64(RelayProtocol.cookieLifetime + 1) * 1_000_000_000
        #expect(relay.send(relay.bindRequest(credential: cred, partner: b.key, cookie: cookie), from: a.address).1 == .staleCookie)
        #expect(relay.sessions.sessionCount == 0)
    }

    @Test func badCredentialsAreForbidden() {
        let relay = Relay()
        #expect(relay.bind(a, to: b, credential: relay.credential(a, secret: "guess")).0 == .badCredential)
        #expect(relay.bind(a, to: b, credential: relay.credential(a, expiry: relay.wall)).0 == .expired)
        // Someone else's credential binds someone else's key: b's credential cannot bind a's side.
        #expect(relay.bind(a, to: b, credential: relay.credential(b)).0 == .malformed)  // b to b
        let (r, f) = relay.bind(a, to: b, credential: Credential(token: [1, 2, 3], key: []))
        #expect(r == .badCredential && f?.code == 403)
        // A token alone (its key unknown, or the wrong one) binds nothing.
        #expect(relay.bind(a, to: b, credential: Credential(token: relay.credential(a).token, key: Crypto.randomBytes(32))).0 == .badCredential)
        #expect(relay.sessions.sessionCount == 0)
    }

    @Test func malformedRequestsAndFloodsGetNoAnswer() {
        let relay = Relay(bindsPerSecond: 5)
        #expect(relay.send(relay.bindRequest(credential: nil, partner: b.key), from: a.address) == ([], .malformed))
        #expect(relay.send(relay.bindRequest(credential: relay.credential(a), partner: [1, 2]), from: a.address) == ([], .malformed))
        #expect(relay.send(STUNWriter.build(method: RelayProtocol.bindMethod, class: .indication) { _ in }, from: a.address) == ([], .malformed))
        #expect(relay.send([0, 0, 0, 0], from: a.address) == ([], .malformed))
        var results: [BindResult] = []
        for _ in 0..<8 { results.append(relay.send(relay.bindRequest(credential: relay.credential(a), partner: b.key), from: a.address).1) }
        #expect(results.filter { $0 == .challenged }.count == 5 && results.filter { $0 == .rateLimited }.count == 3)
        relay.now += 1_000_000_000
        #expect(relay.send(relay.bindRequest(credential: relay.credential(a), partner: b.key), from: a.address).1 == .challenged)
    }

    @Test func aSTUNBindingRequestLearnsTheMappedAddress() {
        let relay = Relay()
        let (reply, r) = relay.send(STUNWriter.build(method: STUN.Method.binding, class: .request) { _ in }, from: a.address)
        #expect(r == .stunBinding && STUNFields(reply)?.mapped == a.address)
    }

    @Test func networksAreApartAndLimitsAnswer486() {
        var limits = RelaySessions.Limits()
        limits.sessionsPerPeer = 2
        let relay = Relay(limits: limits)
        // The same pair of keys in two networks: two sessions, never joined.
        #expect(relay.bind(a, to: b, credential: relay.credential(a, network: "one")).0 == .waiting)
        #expect(relay.bind(b, to: a, credential: relay.credential(b, network: "two")).0 == .waiting)
        #expect(relay.sessions.sessionCount == 2 && relay.sessions.activeCount == 0)
        #expect(relay.bind(a, to: TestPeer("192.0.2.9:1"), credential: relay.credential(a, network: "one")).0 == .waiting)
        let (r, f) = relay.bind(a, to: TestPeer("192.0.2.9:2"), credential: relay.credential(a, network: "one"))
        #expect(r == .quota && f?.code == 486)
    }
}
