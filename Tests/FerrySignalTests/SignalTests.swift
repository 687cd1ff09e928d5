import Testing
import FerryCore
import FerrySystem
import Foundation
import FerrySignal
import FerryTLS
import FerryWire

@Suite struct SignalTokens {
    let peer = Base64.std([UInt8](repeating: 7, count: 32))

    @Test func mintAndVerify() throws {
        let t = SignalToken.mint(secret: "0123456789abcdef", network: "net-a", peer: peer, expiry: 2000)
        #expect(t.hasPrefix("ferry1."))
        #expect(SignalToken.verify(t, secrets: ["other-secret-xxxxxx", "0123456789abcdef"], peer: peer, now: 1000)
                == .success(SignalIdentity(network: "net-a", expiry: 2000)))
    }

    @Test func refusals() {
        let t = SignalToken.mint(secret: "0123456789abcdef", network: "net-a", peer: peer, expiry: 2000)
        #expect(SignalToken.verify(t, secrets: ["0123456789abcdef"], peer: peer, now: 2000) == .failure(.tokenExpired))
        #expect(SignalToken.verify(t, secrets: ["wrong-secret-0000"], peer: peer, now: 1000) == .failure(.authFailed))
        let other = Base64.std([UInt8](repeating: 8, count: 32))
        #expect(SignalToken.verify(t, secrets: ["0123456789abcdef"], peer: other, now: 1000) == .failure(.authFailed), "bound to one key")
        var forged = Array(t)
        forged[10] = forged[10] == "A" ? "B" : "A"
        #expect(SignalToken.verify(String(forged), secrets: ["0123456789abcdef"], peer: peer, now: 1000) == .failure(.authFailed))
        #expect(SignalToken.verify("garbage", secrets: ["0123456789abcdef"], peer: peer, now: 1000) == .failure(.authFailed))
        let noNetwork = SignalToken.mint(secret: "0123456789abcdef", network: "", peer: peer, expiry: 2000)
        #expect(SignalToken.verify(noNetwork, secrets: ["0123456789abcdef"], peer: peer, now: 1000) == .failure(.wrongNetwork),
                "an empty network is no network")
    }
}

@Suite struct SignalIdentityProof {
    @Test func proofBindsKeyAndChallenge() {
        let server = SignalServerKey(privateKey: X25519.keyPair().privateKey)
        let peer = X25519.keyPair()
        let challenge = [UInt8](repeating: 1, count: 32)
        let proof = SignalServerKey.proof(peerPrivateKey: peer.privateKey, serverPublicKey: server.publicKey, challenge: challenge)!
        #expect(server.verify(proof: proof, peerPublicKey: peer.publicKey, challenge: challenge))
        #expect(!server.verify(proof: proof, peerPublicKey: peer.publicKey, challenge: [UInt8](repeating: 2, count: 32)))
        let other = X25519.keyPair()
        #expect(!server.verify(proof: proof, peerPublicKey: other.publicKey, challenge: challenge), "another key cannot borrow the proof")
        #expect(!server.verify(proof: proof, peerPublicKey: [UInt8](repeating: 0, count: 32), challenge: challenge), "low-order keys are refused")
    }
}

@Suite struct SignalSessions {
    let server = SignalServerKey(privateKey: X25519.keyPair().privateKey)

    func policy(burst: Double = 100) -> SignalPolicy {
        SignalPolicy(serverKey: server, tokenSecrets: ["0123456789abcdef"], jwt: nil, maxPayload: 100, messagesPerSecond: 10,
                     messageBurst: burst, bytesPerSecond: 1_048_576, relays: [RelayHandout(region: "eu", urls: ["turn:r:3478"], secret: "s")],
                     relayTTL: 600, pingInterval: 20)
    }

    func object(_ bytes: [UInt8]) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any] ?? [:]
    }

    func authed(_ p: SignalPolicy) -> (SignalSession, String) {
        let s = SignalSession(policy: p, now: 0)
        let peer = X25519.keyPair()
        let proof = SignalServerKey.proof(peerPrivateKey: peer.privateKey, serverPublicKey: server.publicKey, challenge: s.challenge)!
        let key = Base64.std(peer.publicKey)
        let token = SignalToken.mint(secret: "0123456789abcdef", network: "n", peer: key, expiry: 5000)
        let msg = SignalSession.json(["v": 1, "type": "auth", "peer_key": key, "proof": Base64.std(proof), "token": token])
        let actions = s.receive(msg, now: 0, wallNow: 1000)
        guard case .register(let registered, let network, let welcome)? = actions.first else {
            Issue.record("not registered: \(actions)")
            return (s, key)
        }
        #expect(registered == key && network == "n")
        let w = object(welcome)
        #expect(w["type"] as? String == "welcome")
        let relays = w["relays"] as? [[String: Any]]
        #expect(relays?.first?["username"] as? String == "1600:\(key)")
        return (s, key)
    }

    @Test func helloCarriesServerKeyAndChallenge() {
        let s = SignalSession(policy: policy(), now: 0)
        let h = object(s.hello())
        #expect(h["server_key"] as? String == Base64.std(server.publicKey))
        #expect(Base64.decode(h["challenge"] as? String ?? "") == s.challenge)
    }

    @Test func mustAuthenticateFirstAndBadProofCloses() {
        let s = SignalSession(policy: policy(), now: 0)
        let offer = SignalSession.json(["v": 1, "type": "offer", "to": Base64.std([UInt8](repeating: 1, count: 32))])
        guard case .reply(let r)? = s.receive(offer, now: 0, wallNow: 0).first else { Issue.record("no reply"); return }
        #expect(object(r)["code"] as? String == "not_authenticated")
        let bad = SignalSession.json(["v": 1, "type": "auth", "peer_key": Base64.std([UInt8](repeating: 9, count: 32)),
                                      "proof": Base64.std([UInt8](repeating: 0, count: 32)), "token": "x"])
        let actions = s.receive(bad, now: 0, wallNow: 0)
        #expect(actions.contains { if case .close = $0 { return true } else { return false } })
        #expect(s.state == .closed)
    }

    @Test func routingStampsTheSender() {
        let (s, key) = authed(policy())
        let to = Base64.std([UInt8](repeating: 3, count: 32))
        let msg = SignalSession.json(["v": 1, "type": "candidate", "to": to, "payload": "c1", "id": 5])
        guard case .route(let dest, let message, _)? = s.receive(msg, now: 1, wallNow: 1001).first else { Issue.record("not routed"); return }
        #expect(dest == to)
        let o = object(message)
        #expect(o["from"] as? String == key && o["payload"] as? String == "c1" && o["type"] as? String == "candidate")
    }

    @Test func validationErrors() {
        let (s, _) = authed(policy())
        func code(_ bytes: [UInt8]) -> String? {
            for a in s.receive(bytes, now: 1, wallNow: 1001) { if case .reply(let r) = a { return object(r)["code"] as? String } }
            return nil
        }
        let to = Base64.std([UInt8](repeating: 3, count: 32))
        #expect(code(Array("{not json".utf8)) == "bad_json")
        #expect(code(SignalSession.json(["v": 2, "type": "offer"])) == "unsupported_version")
        #expect(code(SignalSession.json(["v": 1, "type": "dance"])) == "unknown_type")
        #expect(code(SignalSession.json(["v": 1, "type": "offer", "to": "short"])) == "bad_message")
        #expect(code(SignalSession.json(["v": 1, "type": "offer", "to": to, "from": to])) == "bad_message")
        #expect(code(SignalSession.json(["v": 1, "type": "offer", "to": to, "payload": String(repeating: "x", count: 101)])) == "payload_too_large")
        #expect(code(SignalSession.json(["v": 1, "type": "ping"])) == nil)
    }

    @Test func rateLimitBites() {
        let (s, _) = authed(policy(burst: 5))
        let to = Base64.std([UInt8](repeating: 3, count: 32))
        let msg = SignalSession.json(["v": 1, "type": "offer", "to": to])
        var routed = 0, limited = 0
        for _ in 0..<20 {
            for a in s.receive(msg, now: 1, wallNow: 1001) {
                if case .route = a { routed += 1 }
                if case .dropped(.rateLimited) = a { limited += 1 }
            }
        }
        #expect(routed == 5 && limited == 15)
        // A second later, 10 more tokens (10/s).
        let later = (0..<20).filter { _ in s.receive(msg, now: 1_000_000_001, wallNow: 1002).contains { if case .route = $0 { return true } else { return false } } }.count
        #expect(later == 5, "the bucket holds at most the burst")
    }

    @Test func expiredAuthorizationCloses() {
        let (s, _) = authed(policy())
        let actions = s.receive(SignalSession.json(["v": 1, "type": "ping"]), now: 1, wallNow: 5000)
        #expect(actions.contains { if case .close = $0 { return true } else { return false } })
    }
}

@Suite struct StrictJSON {
    func parse(_ s: String) -> JSONValue? { JSONValue.parse(Array(s.utf8)) }

    @Test func validDocuments() {
        #expect(parse(#"{"a":1,"b":[true,false,null],"c":{"d":"e\n\u00e9\ud83d\ude00"}}"#) == .object([
            ("a", .number(1)), ("b", .array([.bool(true), .bool(false), .null])),
            ("c", .object([("d", .string("e\né😀"))]))]))
        #expect(parse(" [ -1.5e3 , 0 ] ") == .array([.number(-1500), .number(0)]))
        #expect(parse(#""x""#) == .string("x"))
    }

    @Test(arguments: [
        "", "{", "{\"a\":}", "{\"a\" 1}", "{\"a\":1,}", "[1,]", "01", "1.", ".5", "-", "tru", "nul",
        "{\"a\":1}x", "\"\\x\"", "\"\u{01}\"", "\"\\ud800\"", "\"\\udc00\"", "{\"a\":1,\"a\":2}", "{a:1}",
        String(repeating: "[", count: 100) + String(repeating: "]", count: 100),
        "1e999", "-4e308", "[0,4e308]",  // beyond a Double: would read as infinity (found by fuzzing)
    ])
    func invalidDocuments(_ s: String) {
        #expect(parse(s) == nil, "accepted: \(s.debugDescription)")
    }

    @Test func invalidUTF8IsRefused() {
        #expect(JSONValue.parse([34, 0xC3, 0x28, 34]) == nil)
    }

    @Test func encodingRoundTrips() {
        let v = JSONValue.object([("s", .string("q\"\\\n\u{1}")), ("n", .number(3)), ("f", .number(0.5)), ("a", .array([.null]))])
        #expect(JSONValue.parse(v.encoded()) == v)
    }

    /// Found by the `json` fuzz target: `{"id":1e999}` was read as infinity and an error reply
    /// echoing that id as `ref` carried `inf`, which is not JSON.
    @Test func repliesEchoingAnIdStayJSON() {
        let server = SignalServerKey(privateKey: X25519.keyPair().privateKey)
        let policy = SignalPolicy(serverKey: server, tokenSecrets: ["0123456789abcdef"], jwt: nil, maxPayload: 100, messagesPerSecond: 10,
                                  messageBurst: 10, bytesPerSecond: 1000, relays: [], relayTTL: 600, pingInterval: 20)
        let s = SignalSession(policy: policy, now: 0)
        for text in [#"{"v":1,"type":"offer","id":1e999}"#, #"{"v":1,"type":"offer","id":-1e309}"#] {
            for case .reply(let r) in s.receive(Array(text.utf8), now: 0, wallNow: 0) {
                #expect(JSONValue.parse(r) != nil, "not JSON: \(String(decoding: r, as: UTF8.self))")
            }
        }
        #expect(JSONValue.number(.infinity).encoded() == Array("null".utf8), "the writer never writes a non-number")
    }

    @Test func keyText() {
        let key = Base64.std([UInt8](repeating: 0xAB, count: 32))
        #expect(KeyText.isKey(key))
        #expect(!KeyText.isKey(String(key.dropLast())))
        #expect(!KeyText.isKey("!" + key.dropFirst()))
    }
}

@Suite struct SignalFuzz {
    @Test func sessionSurvivesMutatedMessages() {
        let server = SignalServerKey(privateKey: X25519.keyPair().privateKey)
        let policy = SignalPolicy(serverKey: server, tokenSecrets: ["0123456789abcdef"], jwt: nil, maxPayload: 100,
                                  messagesPerSecond: 1e9, messageBurst: 1e9, bytesPerSecond: 1e12, relays: [], relayTTL: 600,
                                  pingInterval: 20)
        let to = Base64.std([UInt8](repeating: 3, count: 32))
        let seeds = [
            Array(#"{"v":1,"type":"offer","to":"\#(to)","payload":"x\u00e9\"","id":[1,{"a":null}]}"#.utf8),
            Array(#"{"v":1,"type":"subscribe","peers":["\#(to)"]}"#.utf8),
            Array(#"{"v":1,"type":"auth","peer_key":"\#(to)","proof":"AAAA","token":"ferry1.a.b"}"#.utf8),
        ]
        let seed = SplitMix64.testSeed()
        var g = SplitMix64(seed: seed)
        for i in 0..<20_000 {
            let s = SignalSession(policy: policy, now: 0)
            var m = seeds[i % seeds.count]
            switch i % 3 {
            case 0: for _ in 0..<3 { m[Int.random(in: 0..<m.count, using: &g)] = UInt8.random(in: 0...255, using: &g) }
            case 1: m = Array(m.prefix(Int.random(in: 0...m.count, using: &g)))
            default: m = (0..<Int.random(in: 0..<80, using: &g)).map { _ in [UInt8]("{}[]\":,\\u0123456789abcdefnulltrue ".utf8).randomElement(using: &g)! }
            }
            let actions = s.receive(m, now: 1, wallNow: 1000)
            // No mutant authenticates (the proof is wrong) or is routed before authenticating,
            // and every message gets an answer or a drop.
            #expect(!actions.isEmpty, "FERRY_TEST_SEED=\(seed) \(m)")
            for a in actions {
                switch a {
                case .register, .route, .subscribe, .unsubscribe: Issue.record("FERRY_TEST_SEED=\(seed): \(a) for \(m)")
                default: break
                }
            }
            _ = JSONValue.parse(m)
        }
        // Deep nesting is refused, not recursed into without bound.
        #expect(JSONValue.parse(Array(String(repeating: "[", count: 100_000).utf8)) == nil)
    }
}

/// Work and memory before authentication stay linear in the input and small.
@Suite struct SignalPreAuthBounds {
    let server = SignalServerKey(privateKey: X25519.keyPair().privateKey)

    func policy() -> SignalPolicy {
        SignalPolicy(serverKey: server, tokenSecrets: ["0123456789abcdef"], jwt: nil, maxPayload: 100, messagesPerSecond: 10,
                     messageBurst: 10, bytesPerSecond: 1_000_000, relays: [], relayTTL: 600, pingInterval: 20,
                     preauthMessages: 4, preauthBytes: 4096)
    }

    static func manyKeys(_ n: Int) -> [UInt8] {
        Array(("{" + (0..<n).map { "\"k\($0)\":0" }.joined(separator: ",") + "}").utf8)
    }

    @Test func objectsHaveAMemberCapAndDuplicatesAreFoundPastTheFirstFew() {
        #expect(JSONValue.parse(Self.manyKeys(256)) != nil)
        #expect(JSONValue.parse(Self.manyKeys(257)) == nil, "past the member cap")
        // A duplicate far into an object (found by the set, not a scan) is still refused.
        let dup = "{" + (0..<200).map { "\"k\($0)\":0" }.joined(separator: ",") + ",\"k150\":1}"
        #expect(JSONValue.parse(Array(dup.utf8)) == nil)
        let early = #"{"a":1,"b":2,"a":3}"#
        #expect(JSONValue.parse(Array(early.utf8)) == nil)
    }

    @Test func aConnectionMaySendLittleBeforeItAuthenticates() {
        let s = SignalSession(policy: policy(), now: 0)
        let junk = Array(#"{"v":1,"type":"ping"}"#.utf8)
        for _ in 0..<4 {
            let a = s.receive(junk, now: 0, wallNow: 0)
            #expect(!a.contains { if case .close = $0 { true } else { false } })
        }
        let fifth = s.receive(junk, now: 0, wallNow: 0)
        #expect(fifth.contains { if case .close = $0 { true } else { false } } && s.state == .closed)
        // And a single message over the byte budget is refused before it is parsed.
        let t = SignalSession(policy: policy(), now: 0)
        let big = t.receive(Self.manyKeys(500), now: 0, wallNow: 0)
        #expect(big.contains { if case .close = $0 { true } else { false } } && t.state == .closed)
    }

    @Test func aLargeIdIsNotEchoed() {
        let s = SignalSession(policy: policy(), now: 0)
        for (id, echoed) in [("\"short\"", true), ("\"\(String(repeating: "x", count: 129))\"", false), ("7", true)] {
            let text = Array(#"{"v":1,"type":"ping","id":\#(id)}"#.utf8)
            for case .reply(let r) in s.receive(text, now: 0, wallNow: 0) {
                #expect((JSONValue.parse(r)?["ref"] != nil) == echoed, "\(id)")
            }
        }
    }
}
