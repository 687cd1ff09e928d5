import Testing
import FerryClient
import FerryCore
import FerryWire
import FerryTURN

/// FerryClient's TURN client against FerryTURN's server state machine, both pure: every byte
/// the client sends goes through `TURNServer.handle`, every answer back through
/// `TURNClient.receive`, on one fake clock.
@Suite struct TURNClientAgainstServer {
    /// Runs a client request to completion: answers (401, 438) are fed back until no more
    /// bytes come; returns the client's events.
    static func exchange(_ h: Harness, _ client: inout TURNClient, _ first: [UInt8]) -> [TURNClient.Event] {
        var queue = [first], events: [TURNClient.Event] = []
        while let bytes = queue.first {
            queue.removeFirst()
            guard let reply = h.send(bytes).reply else { continue }
            reply.bytes.withUnsafeBytes { raw in
                let (e, s) = client.receive(try! STUNMessage.parse(raw).get(), now: h.now)
                events += e
                queue += s
            }
        }
        return events
    }

    @Test func allocatesAfterTheChallengeAndPermitsAndBinds() {
        let h = Harness()
        var c = TURNClient(credentials: .init(username: "alice", password: "wonderland"), reliable: false)
        let events = Self.exchange(h, &c, c.allocate(now: h.now))
        guard case .allocated(let relayed, let mapped, let lifetime) = events.first else {
            Issue.record("no allocation: \(events)")
            return
        }
        #expect(c.phase == .allocated)
        #expect(relayed.ip == IPAddress("198.51.100.1"))
        #expect(mapped == h.client)
        #expect(lifetime == 600)
        #expect(c.realm == "ferry.test")

        let peer = SocketAddress("192.0.2.10:7000")!
        #expect(Self.exchange(h, &c, c.permit([peer.ip], now: h.now)) == [.permitted([peer.ip])])
        let (number, bind) = c.bindChannel(to: peer, now: h.now)
        #expect(Self.exchange(h, &c, bind) == [.channelBound(number, peer)])
        #expect(c.channel(for: peer) == number && c.peer(forChannel: number) == peer)
        // The server now routes that channel to that peer.
        #expect(h.server.channelTarget(client: ClientKey(address: h.client, transport: .udp(listener: 0)),
                                       channel: number, length: 4, now: h.now)?.peer == peer)
    }

    @Test func wrongPasswordFailsTheAllocation() {
        let h = Harness()
        var c = TURNClient(credentials: .init(username: "alice", password: "nope"), reliable: false)
        let events = Self.exchange(h, &c, c.allocate(now: h.now))
        #expect(events.count == 1)
        if case .failed(.allocate, let code, _)? = events.first { #expect(code == 401) } else { Issue.record("\(events)") }
        #expect(c.phase == .failed)
    }

    @Test func restCredentialsAreAccepted() {
        let h = Harness()
        let creds = TURNClient.Credentials.rest(secret: "s3cret", label: "peer", expiry: h.wallNow + 3600)
        var c = TURNClient(credentials: creds, reliable: false)
        let events = Self.exchange(h, &c, c.allocate(now: h.now))
        #expect(c.phase == .allocated, "\(events)")
    }

    @Test func aStaleNonceIsRetriedOnceWithTheNewOne() {
        let h = Harness()
        var c = TURNClient(credentials: .init(username: "alice", password: "wonderland"), reliable: false)
        _ = Self.exchange(h, &c, c.allocate(now: h.now))
        // The nonce lifetime is 600 s (Harness): 11 minutes later it is stale.
        h.now += 660 * 1_000_000_000
        h.wallNow += 660
        let peer = SocketAddress("192.0.2.10:7000")!
        #expect(Self.exchange(h, &c, c.permit([peer.ip], now: h.now)) == [.permitted([peer.ip])])
    }

    @Test func refreshesTheAllocationPermissionsAndChannelsBeforeTheyLapse() {
        let h = Harness()
        var c = TURNClient(credentials: .init(username: "alice", password: "wonderland"), reliable: false)
        _ = Self.exchange(h, &c, c.allocate(lifetime: 600, now: h.now))
        let a = SocketAddress("192.0.2.10:7000")!, b = SocketAddress("192.0.2.11:7000")!
        _ = Self.exchange(h, &c, c.permit([a.ip], now: h.now))
        _ = Self.exchange(h, &c, c.bindChannel(to: b, now: h.now).request)
        var refreshes = 0, permits = 0, binds = 0
        // Thirty minutes of ticks, a second apart: nothing the client keeps may lapse.
        for _ in 0..<1800 {
            h.now += 1_000_000_000
            h.wallNow += 1
            let (events, send) = c.tick(now: h.now)
            #expect(!events.contains { if case .failed = $0 { true } else { false } }, "\(events)")
            for bytes in send {
                for e in Self.exchange(h, &c, bytes) {
                    switch e {
                    case .refreshed: refreshes += 1
                    case .permitted: permits += 1
                    case .channelBound: binds += 1
                    default: break
                    }
                }
            }
            let key = ClientKey(address: h.client, transport: .udp(listener: 0))
            #expect(h.server.channelTarget(client: key, channel: c.channel(for: b)!, length: 4, now: h.now) != nil)
        }
        #expect(refreshes >= 3, "600 s allocation refreshed a minute early over 30 minutes")
        #expect(permits >= 7, "the permission refreshed every 4 minutes")
        #expect(binds >= 3, "the channel re-bound every 9 minutes")
        #expect(c.phase == .allocated)
    }

    @Test func unansweredRequestsAreRetransmittedThenFail() {
        var c = TURNClient(credentials: .init(username: "u", password: "p"), reliable: false)
        var now: UInt64 = 1_000_000_000
        let first = c.allocate(now: now)
        var sends = [first]
        var failed = false
        for _ in 0..<50_000 where !failed {
            now += 1_000_000  // 1 ms steps
            let (events, send) = c.tick(now: now)
            sends += send
            failed = events.contains(.failed(.allocate, code: 0, reason: "no answer"))
        }
        #expect(sends.count == TURNClient.maxSends)
        #expect(sends.allSatisfy { $0 == first }, "a retransmission is the same request")
        #expect(failed && c.phase == .failed)
        // 0.5 + 1 + 2 + 4 + 8 + 16 + 8 (16 RTO) = 39.5 s.
        #expect(now >= 1_000_000_000 + 39_500_000_000 && now < 1_000_000_000 + 39_600_000_000)
    }

    @Test func aForgedSuccessIsIgnored() {
        let h = Harness()
        var c = TURNClient(credentials: .init(username: "alice", password: "wonderland"), reliable: false)
        // Learn realm and nonce: the first answer is a 401 and the client retries authenticated.
        let challenge = h.send(c.allocate(now: h.now)).reply!
        let retry = challenge.bytes.withUnsafeBytes { c.receive(try! STUNMessage.parse($0).get(), now: h.now).send[0] }
        let tid = retry.withUnsafeBytes { try! STUNMessage.parse($0).get().transactionID }
        // A success for that transaction without our MESSAGE-INTEGRITY (an off-path attacker).
        let forged = STUNWriter.build(method: STUN.Method.allocate, class: .success, transactionID: tid) { w in
            w.append(STUN.Attribute.xorRelayedAddress, xorAddress: SocketAddress("203.0.113.66:1")!)
        }
        let events = forged.withUnsafeBytes { c.receive(try! STUNMessage.parse($0).get(), now: h.now).events }
        #expect(events.isEmpty && c.phase == .allocating)
    }

    /// The client's next Refresh, from its ticks (a minute before the allocation lapses).
    static func nextRefresh(_ h: Harness, _ c: inout TURNClient) -> [UInt8] {
        for _ in 0..<700 {
            h.now += 1_000_000_000
            h.wallNow += 1
            if let bytes = c.tick(now: h.now).send.first { return bytes }
        }
        Issue.record("no refresh")
        return []
    }

    /// An on-path attacker who sees a Refresh's transaction id injects a 437: without our
    /// MESSAGE-INTEGRITY it is ignored (the relay is kept), and the server's signed answer counts.
    @Test func anUnsignedErrorToAnAuthenticatedRequestIsIgnored() {
        let h = Harness()
        var c = TURNClient(credentials: .init(username: "alice", password: "wonderland"), reliable: false)
        _ = Self.exchange(h, &c, c.allocate(now: h.now))
        #expect(c.phase == .allocated)
        let refresh = Self.nextRefresh(h, &c)
        let tid = refresh.withUnsafeBytes { try! STUNMessage.parse($0).get().transactionID }
        for code in [437, 403, 508] {
            let forged = STUNWriter.build(method: STUN.Method.refresh, class: .error, transactionID: tid) { $0.appendErrorCode(code, reason: nil) }
            let events = forged.withUnsafeBytes { c.receive(try! STUNMessage.parse($0).get(), now: h.now).events }
            #expect(events.isEmpty && c.phase == .allocated, "an unsigned \(code) changed nothing")
        }
        // The genuine answer still arrives and counts.
        let events = Self.exchange(h, &c, refresh)
        #expect(events == [.refreshed(lifetime: 600)])
        // A signed error (the server's own 437 once the allocation is gone) still ends it.
        #expect(h.request(STUN.Method.refresh) { $0.append(STUN.Attribute.lifetime, uint32: 0) }?.isSuccess == true)
        _ = Self.exchange(h, &c, Self.nextRefresh(h, &c))
        #expect(c.phase == .failed)
    }
}
