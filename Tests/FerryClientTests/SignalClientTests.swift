import Testing
import FerryClient
import FerryCore
import FerrySignal
import FerryTLS
import FerryWire

/// FerryClient's signaling client against FerrySignal's server session, both pure: the client's
/// masked frames are unmasked as the server's connection does, and the session's answers go
/// back as the server's (unmasked) frames.
@Suite struct SignalClientAgainstSession {
    let serverKey = SignalServerKey(privateKey: X25519.keyPair().privateKey)
    let peer = X25519.keyPair()

    func policy() -> SignalPolicy {
        SignalPolicy(serverKey: serverKey, tokenSecrets: ["0123456789abcdef"], jwt: nil, maxPayload: 1000, messagesPerSecond: 10,
                     messageBurst: 10, bytesPerSecond: 100_000,
                     relays: [RelayHandout(region: "eu", urls: ["turn:relay.example:3478?transport=udp"], secret: "s")],
                     relayTTL: 600, pingInterval: 20)
    }

    /// The texts of the client's frames, which must all be masked (RFC 6455 §5.3).
    static func texts(_ bytes: [UInt8]) -> [[UInt8]] {
        var out: [[UInt8]] = [], rest = bytes
        while !rest.isEmpty {
            guard case .frame(let f) = rest.withUnsafeBytes({ WebSocket.parse($0, maxPayload: 1 << 20) }) else {
                Issue.record("a client frame that is not masked or not whole")
                return out
            }
            var p = Array(rest[f.payloadStart..<f.frameLength])
            p.withUnsafeMutableBytes { WebSocket.unmask($0, key: f.maskKey!) }
            if f.opcode == .text { out.append(p) }
            rest.removeFirst(f.frameLength)
        }
        return out
    }

    /// Upgrades and authenticates; returns the client, the session and the welcome event.
    func connect(token: String) -> (SignalClient, SignalSession, [SignalClient.Event]) {
        var client = SignalClient(privateKey: peer.privateKey, token: token, host: "relay.example")!
        let request = client.start()
        guard case .complete(let head, _) = request.withUnsafeBytes({ HTTPHeadParser.parse($0) }),
              case .success(let upgrade) = WebSocket.accept(head) else {
            Issue.record("the upgrade request is not one the server accepts")
            return (client, SignalSession(policy: policy(), now: 0), [])
        }
        let session = SignalSession(policy: policy(), now: 0)
        var (events, out) = client.receive(upgrade + WebSocket.encode(.text, session.hello()))
        #expect(client.phase == .authenticating)
        for text in Self.texts(out) {
            for action in session.receive(text, now: 0, wallNow: 1_800_000_000) {
                switch action {
                case .register(_, _, let welcome), .reply(let welcome):
                    (events, out) = client.receive(WebSocket.encode(.text, welcome))
                case .close(let code, _):
                    let r = client.receive(WebSocket.close(code))
                    events += r.events
                default: break
                }
            }
        }
        return (client, session, events)
    }

    @Test func authenticatesWithTheProofAndReadsTheWelcome() {
        let token = SignalToken.mint(secret: "0123456789abcdef", network: "acme", peer: nil, expiry: 1_800_000_600)
        let (client, session, events) = connect(token: token)
        #expect(session.peer == Base64.std(peer.publicKey), "the server verified the X25519 proof")
        #expect(client.phase == .ready)
        guard case .welcome(let network, let expires, let relays)? = events.first else {
            Issue.record("no welcome: \(events)")
            return
        }
        #expect(network == "acme" && expires == 1_800_000_600)
        #expect(relays.count == 1 && relays[0].region == "eu" && relays[0].urls == ["turn:relay.example:3478?transport=udp"])
        #expect(relays[0].credential == Crypto.restPassword(secret: "s", username: relays[0].username))
    }

    @Test func aRefusedTokenEndsWithoutRetrying() {
        let token = SignalToken.mint(secret: "wrong-secret-0000", network: "acme", peer: nil, expiry: 1_800_000_600)
        let (client, _, events) = connect(token: token)
        #expect(client.phase == .ended)
        #expect(events.contains(.ended(.refused(code: "auth_failed"))), "\(events)")
        var policy = ReconnectPolicy(seed: 1)
        #expect(policy.delay(after: .refused(code: "auth_failed"), upFor: 0) == nil)
    }

    @Test func routesPresenceAndPings() {
        let token = SignalToken.mint(secret: "0123456789abcdef", network: "acme", peer: nil, expiry: 1_800_000_600)
        var (client, session, _) = connect(token: token)
        let other = Base64.std(X25519.keyPair().publicKey)
        let offer = Self.texts(client.route("offer", to: other, payload: "sealed", id: .number(7)))
        guard case .route(let to, let message, _)? = session.receive(offer[0], now: 0, wallNow: 1_800_000_000).first else {
            Issue.record("the session did not route the offer")
            return
        }
        #expect(to == other)
        #expect(JSONValue.parse(message)?["payload"]?.string == "sealed")
        // What the other side receives: the same kind with `from` stamped by the server.
        let stamped = #"{"v":1,"type":"answer","to":"\#(Base64.std(peer.publicKey))","payload":"x","from":"\#(other)"}"#
        let (events, _) = client.receive(WebSocket.encode(.text, Array(stamped.utf8)))
        guard case .message("answer", other, "x", _)? = events.first else {
            Issue.record("\(events)")
            return
        }
        #expect(client.receive(WebSocket.encode(.text, SignalSession.presence(other, online: true))).events == [.peerOnline(other)])
        // A server ping is answered with a masked pong carrying the same bytes.
        let pong = client.receive(WebSocket.encode(.ping, [1, 2, 3])).send
        guard case .frame(let f) = pong.withUnsafeBytes({ WebSocket.parse($0, maxPayload: 100) }) else {
            Issue.record("no masked pong")
            return
        }
        var p = Array(pong[f.payloadStart..<f.frameLength])
        p.withUnsafeMutableBytes { WebSocket.unmask($0, key: f.maskKey!) }
        #expect(f.opcode == .pong && p == [1, 2, 3])
    }

    @Test func replacementAndDrainingAreTold() {
        let token = SignalToken.mint(secret: "0123456789abcdef", network: "acme", peer: nil, expiry: 1_800_000_600)
        var (a, _, _) = connect(token: token)
        var events = a.receive(WebSocket.encode(.text, SignalSession.error(.replaced, "newer connection"))).events
        events += a.receive(WebSocket.close(.replaced)).events
        #expect(events.last == .ended(.replaced))
        var (b, _, _) = connect(token: token)
        #expect(b.receive(WebSocket.close(.goingAway)).events == [.ended(.draining)])
        var (c, _, _) = connect(token: token)
        #expect(c.connectionLost() == .ended(.closed(code: 1006)))
    }

    /// A frame with FIN cleared (a fragment that more continuation frames follow).
    static func fragment(_ opcode: WebSocket.Opcode, _ payload: [UInt8]) -> [UInt8] {
        var f = WebSocket.encode(opcode, payload)
        f[0] &= 0x7F
        return f
    }

    @Test func messagesAreBoundedWholeNotPerFrameAndFragmentsMustStartAMessage() {
        let token = SignalToken.mint(secret: "0123456789abcdef", network: "acme", peer: nil, expiry: 1_800_000_600)
        // A fragmented message reassembles.
        var (client, _, _) = connect(token: token)
        let presence = SignalSession.presence(Base64.std(X25519.keyPair().publicKey), online: true)
        let half = presence.count / 2
        var events = client.receive(Self.fragment(.text, Array(presence[..<half]))).events
        #expect(events.isEmpty)
        events = client.receive(WebSocket.encode(.continuation, Array(presence[half...]))).events
        guard case .peerOnline? = events.first else {
            Issue.record("\(events)")
            return
        }
        // Fragments each under the limit but over it together end the session.
        let chunk = [UInt8](repeating: 0x20, count: SignalClient.maxMessage / 2 + 1)
        _ = client.receive(Self.fragment(.text, chunk))
        _ = client.receive(Self.fragment(.continuation, chunk))
        #expect(client.phase == .ended)
        // A continuation frame with no message started ends it too.
        (client, _, _) = connect(token: token)
        events = client.receive(WebSocket.encode(.continuation, Array(presence))).events
        #expect(client.phase == .ended && !events.isEmpty)
    }

    @Test func aRefusedUpgradeIsAHandshakeEnding() {
        var client = SignalClient(privateKey: peer.privateKey, token: "t", host: "h")!
        _ = client.start()
        let events = client.receive(Array("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".utf8)).events
        #expect(events == [.ended(.handshake("HTTP 403: HTTP/1.1 403 Forbidden"))])
        var wrongAccept = SignalClient(privateKey: peer.privateKey, token: "t", host: "h")!
        _ = wrongAccept.start()
        let forged = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n"
        #expect(wrongAccept.receive(Array(forged.utf8)).events == [.ended(.handshake("HTTP 101: bad Upgrade or Sec-WebSocket-Accept"))])
    }

    @Test func reconnectBacksOffWithJitterAndStartsOverAfterAStableSession() {
        var p = ReconnectPolicy(seed: 42)
        var delays: [UInt64] = []
        for _ in 0..<10 { delays.append(p.delay(after: .closed(code: 1006), upFor: 1_000_000_000)!) }
        #expect(delays[0] >= 400_000_000 && delays[0] <= 600_000_000)
        #expect(delays[1] >= 800_000_000 && delays[1] <= 1_200_000_000)
        #expect(delays.last! >= 24_000_000_000 && delays.last! <= 36_000_000_000, "capped at 30 s ± 20 %")
        #expect(p.delay(after: .replaced, upFor: 0) == nil)
        #expect(p.delay(after: .draining, upFor: 0)! < 250_000_000)
        let afterStable = p.delay(after: .closed(code: 1006), upFor: ReconnectPolicy.stable)!
        #expect(afterStable <= 600_000_000, "a session up for a minute resets the backoff")
    }

    @Test func severalServersAreEachTriedAtOnceBeforeTheBackoff() {
        var three = FailoverRound(servers: 3)
        var quick: [Bool] = []
        // Two quick moves, then the third failure of the round waits for the backoff.
        for _ in 0..<6 { quick.append(three.next(upFor: 0)) }
        #expect(quick == [true, true, false, true, true, false])
        // A session that lasted starts a new round.
        _ = three.next(upFor: 0)
        quick = [three.next(upFor: ReconnectPolicy.stable), three.next(upFor: 0), three.next(upFor: 0)]
        #expect(quick == [true, true, false])
        var one = FailoverRound(servers: 1)
        quick = [one.next(upFor: 0), one.next(upFor: ReconnectPolicy.stable)]
        #expect(quick == [false, false], "one server: always the backoff")
    }
}
