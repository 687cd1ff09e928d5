import FerrySignal
import FerryWire

/// Signaling sessions driven by a script: several connections authenticate (validly or not),
/// route, subscribe, send garbage, age and close, with a directory that registers and replaces
/// them as the server's worker does. Checks that everything a session emits is valid JSON, that
/// routed messages carry the sender's key as `from`, and that nothing is routed before
/// authentication or after a close.
enum SignalSessionTarget {
    static let slots = 4
    static let routedTypes = ["offer", "answer", "candidate", "end_of_candidates", "bye", "ping", "subscribe", "unsubscribe",
                              "auth", "hello", "", "welcome"]

    static func policy(maxPayload: Int, burst: Double) -> SignalPolicy {
        SignalPolicy(serverKey: FuzzKeys.server, tokenSecrets: [FuzzKeys.tokenSecret], jwt: FuzzKeys.jwt, maxPayload: maxPayload,
                     messagesPerSecond: 10, messageBurst: burst, bytesPerSecond: 4096,
                     relays: [RelayHandout(region: "fuzz", urls: ["turn:relay.fuzz:3478"], secret: "relay-secret")],
                     relayTTL: 600, pingInterval: 20)
    }

    static func run(_ b: UnsafeRawBufferPointer) {
        var r = FuzzReader(b)
        let policy = policy(maxPayload: Int(r.byte()) * 4, burst: Double(r.byte() % 32))
        var now: UInt64 = 1_000_000_000
        var wall: UInt64 = 1_800_000_000
        var sessions = [SignalSession?](repeating: nil, count: slots)
        var directory: [String: Int] = [:]  // peer key → slot, as the worker's session table
        var registered = [String?](repeating: nil, count: slots)  // what each slot registered as

        func checkJSON(_ bytes: [UInt8], _ what: String) -> JSONValue {
            guard let v = JSONValue.parse(bytes), case .object = v, v["type"]?.string != nil else {
                require(false, "\(what) is a JSON object with a type: \(String(decoding: bytes, as: UTF8.self))")
                return .null
            }
            return v
        }

        func close(_ slot: Int) {
            guard let s = sessions[slot] else { return }
            // The session's own state may already say closed: the slot remembers its key.
            if let peer = registered[slot], directory[peer] == slot { directory[peer] = nil }
            registered[slot] = nil
            s.closed()
            sessions[slot] = nil
        }

        func deliver(_ slot: Int, _ text: [UInt8]) {
            guard let s = sessions[slot] else { return }
            let wasAuthenticated = s.peer != nil
            let sender = s.peer
            for action in s.receive(text, now: now, wallNow: wall) {
                switch action {
                case .reply(let m):
                    _ = checkJSON(m, "a reply")
                case .register(let peer, let network, let welcome):
                    require(!wasAuthenticated && s.peer == peer && s.network == network && !network.isEmpty,
                            "a session registers once, as the key it proved")
                    require(checkJSON(welcome, "welcome")["peer_key"]?.string == peer, "welcome names the peer")
                    if let old = directory[peer], old != slot { close(old) }  // replaced
                    directory[peer] = slot
                    registered[slot] = peer
                case .route(let to, let message, let offline):
                    require(wasAuthenticated, "nothing is routed before authentication")
                    require(KeyText.isKey(to), "routes go to peer keys")
                    require(checkJSON(message, "a routed message")["from"]?.string == sender, "routed messages carry the sender as from")
                    _ = checkJSON(offline, "the offline answer")
                case .subscribe(let peers, _), .unsubscribe(let peers):
                    require(wasAuthenticated && peers.allSatisfy(KeyText.isKey), "subscriptions are to peer keys, after authentication")
                    require(Set(peers).count == peers.count, "each key once")
                case .dropped:
                    break
                case .close:
                    require(s.state == .closed, "a session that asks to close is closed")
                    close(slot)
                }
            }
        }

        func auth(_ slot: Int, _ r: inout FuzzReader) {
            guard let s = sessions[slot] else { return }
            let who = FuzzKeys.peers[Int(r.byte()) % FuzzKeys.peers.count]
            let proofKey = r.byte() % 8 == 0 ? FuzzKeys.peers[(Int(r.byte()) + 1) % 3].privateKey : who.privateKey
            let proof = SignalServerKey.proof(peerPrivateKey: proofKey, serverPublicKey: FuzzKeys.server.publicKey, challenge: s.challenge) ?? []
            let exp = wall + UInt64(r.byte()) * 30
            let token: String
            switch r.byte() % 6 {
            case 0: token = SignalToken.mint(secret: FuzzKeys.tokenSecret, network: r.pick(["a", "b", ""]), peer: who.key, expiry: exp)
            case 1: token = SignalToken.mint(secret: FuzzKeys.tokenSecret, network: "a", peer: nil, expiry: exp)
            case 2: token = SignalToken.mint(secret: "wrong-secret-0000", network: "a", peer: who.key, expiry: exp)
            case 3: token = FuzzKeys.signedJWT(header: Array(#"{"alg":"EdDSA","kid":"k1"}"#.utf8),
                                               claims: Array(#"{"iss":"\#(FuzzKeys.issuer)","aud":"ferry","exp":\#(exp),"net":"a","peer":"\#(who.key)"}"#.utf8))
            case 4: token = String(decoding: r.blob(), as: UTF8.self)
            default: token = FuzzKeys.signedToken(claims: r.blob())
            }
            var text = #"{"v":1,"type":"auth","peer_key":"\#(who.key)","proof":"\#(Base64.std(proof))","token":"\#(token)""#
            if r.byte() % 4 == 0 { text += #","id":\#(r.byte())"# }
            deliver(slot, Array((text + "}").utf8))
        }

        while !r.atEnd {
            let slot = Int(r.byte()) % slots
            switch r.byte() % 9 {
            case 0:
                close(slot)
                let s = SignalSession(policy: policy, now: now)
                _ = checkJSON(s.hello(), "hello")
                sessions[slot] = s
            case 1:
                auth(slot, &r)
            case 2:
                let type = r.pick(routedTypes)
                let to = r.byte() % 5 == 0 ? String(decoding: r.blob(), as: UTF8.self) : r.pick(FuzzKeys.peers).key
                var text = #"{"v":1,"type":"\#(type)","to":"\#(to)""#
                switch r.byte() % 4 {
                case 0: text += #","payload":"\#(String(repeating: "p", count: Int(r.u16() % 2048)))""#
                case 1: text += #","payload":\#(r.byte())"#
                case 2: text += #","from":"\#(to)""#
                default: break
                }
                if r.byte() % 2 == 0 { text += #","id":"\#(r.byte())""# }
                deliver(slot, Array((text + "}").utf8))
            case 3:
                deliver(slot, r.blob())
            case 4:
                let kind = r.byte() % 2 == 0 ? "subscribe" : "unsubscribe"
                let peers = (0..<Int(r.byte() % 4)).map { _ in "\"\(r.pick(FuzzKeys.peers).key)\"" } + (r.byte() % 3 == 0 ? ["7"] : [])
                deliver(slot, Array(#"{"v":1,"type":"\#(kind)","peers":[\#(peers.joined(separator: ","))]}"#.utf8))
            case 5:
                let ms = UInt64(r.u16())
                now += ms * 1_000_000
                wall += ms / 1000
            case 6:
                close(slot)
            case 7:
                deliver(slot, Array(#"{"v":1,"type":"ping"}"#.utf8))
            default:
                // Everything is reachable from the input as a whole text too.
                deliver(slot, r.take(Int(r.u16() % 4096)))
            }
            for (peer, slot) in directory {
                require(sessions[slot] != nil && registered[slot] == peer, "the directory names only live sessions with that key")
                require(sessions[slot]?.peer == peer || sessions[slot]?.state == .closed, "a registered session keeps its key")
            }
        }
    }
}
