import Testing
import FerryClient
import FerryCore
import FerryWire

/// Two ICE agents on a fake network with a fake clock: each has a host candidate and a relayed
/// one; `direct` says whether host-to-host packets get through (NAT, firewall).
final class FakeNetwork {
    var a: ICEAgent, b: ICEAgent
    var direct: Bool
    var now: UInt64 = 1_000_000_000
    var routesA: [ICERoute] = [], routesB: [ICERoute] = []
    var failures: [String] = []
    let hostA = SocketAddress("10.0.0.1:1000")!, relayA = SocketAddress("198.51.100.1:50000")!
    let hostB = SocketAddress("10.0.0.2:2000")!, relayB = SocketAddress("198.51.100.1:50001")!

    init(direct: Bool) {
        self.direct = direct
        a = ICEAgent(controlling: true, now: now)
        b = ICEAgent(controlling: false, now: now)
        let la = [ICECandidate(kind: .host, address: hostA), ICECandidate(kind: .relay, address: relayA, base: hostA)]
        let lb = [ICECandidate(kind: .host, address: hostB), ICECandidate(kind: .relay, address: relayB, base: hostB)]
        for c in la { a.addLocal(c); b.addRemote(ICECandidate(sdp: c.sdp)!) }
        for c in lb { b.addLocal(c); a.addRemote(ICECandidate(sdp: c.sdp)!) }
        a.setRemoteCredentials(ufrag: b.localUfrag, password: b.localPassword)
        b.setRemoteCredentials(ufrag: a.localUfrag, password: a.localPassword)
    }

    /// Delivers one send from the agent `fromA` (or B); returns the receiver's reaction.
    func deliver(_ s: ICEAgent.Send, fromA: Bool) -> [ICEAgent.Send] {
        let source = s.via == .relayed ? (fromA ? relayA : relayB) : (fromA ? hostA : hostB)
        let toRelay = s.to == relayA || s.to == relayB
        // Host to host needs the direct path; anything through the relay works.
        if s.via == .direct && !toRelay && !direct { return [] }
        let receiverVia: ICEVia = toRelay ? .relayed : .direct
        let reaction = s.bytes.withUnsafeBytes { raw -> (sends: [ICEAgent.Send], events: [ICEAgent.Event]) in
            let m = try! STUNMessage.parse(raw).get()
            return fromA ? b.receive(m, from: source, via: receiverVia, now: now) : a.receive(m, from: source, via: receiverVia, now: now)
        }
        record(reaction.events, a: !fromA)
        return reaction.sends
    }

    func record(_ events: [ICEAgent.Event], a isA: Bool) {
        for e in events {
            switch e {
            case .selected(let r): if isA { routesA.append(r) } else { routesB.append(r) }
            case .failed(let why): failures.append(why)
            }
        }
    }

    /// Runs both agents for `seconds` in 10 ms steps, delivering everything at once.
    func run(seconds: Double) {
        for _ in 0..<Int(seconds * 100) {
            now += 10_000_000
            var queue: [(ICEAgent.Send, Bool)] = []
            let ta = a.tick(now: now), tb = b.tick(now: now)
            record(ta.events, a: true)
            record(tb.events, a: false)
            queue += ta.sends.map { ($0, true) } + tb.sends.map { ($0, false) }
            while !queue.isEmpty {
                let (s, fromA) = queue.removeFirst()
                queue += deliver(s, fromA: fromA).map { ($0, !fromA) }
            }
        }
    }
}

@Suite struct ICEAgentChecks {
    @Test func candidatesRoundTripThroughSDPAndPrioritiesFollowRFC8445() {
        let host = ICECandidate(kind: .host, address: SocketAddress("192.0.2.1:51820")!)
        #expect(host.priority == 126 << 24 | 65535 << 8 | 255)
        let relay = ICECandidate(kind: .relay, address: SocketAddress("198.51.100.7:50000")!, base: SocketAddress("192.0.2.1:51820")!)
        #expect(relay.sdp.hasSuffix("udp 16777215 198.51.100.7 50000 typ relay raddr 192.0.2.1 rport 51820"))
        #expect(ICECandidate(sdp: "candidate:" + relay.sdp) == relay)
        // aioice's form (from Candidate.to_sdp).
        let theirs = ICECandidate(sdp: "6815297761 1 udp 1694498815 203.0.113.9 40000 typ srflx raddr 10.0.0.5 rport 40000")
        #expect(theirs?.kind == .srflx && theirs?.address == SocketAddress("203.0.113.9:40000") && theirs?.related?.ip == IPAddress("10.0.0.5"))
        #expect(ICECandidate(sdp: "1 1 tcp 1 1.2.3.4 5 typ host") == nil)
    }

    @Test func pairsAreOrderedByPairPriority() {
        let net = FakeNetwork(direct: true)
        let p = net.a.pairs
        #expect(p.count == 4)
        #expect(p[0].local.kind == .host && p[0].remote.kind == .host)
        #expect(p.last!.local.kind == .relay && p.last!.remote.kind == .relay)
    }

    @Test func picksTheDirectPathWhenItWorks() {
        let net = FakeNetwork(direct: true)
        net.run(seconds: 2)
        #expect(net.routesA.last?.via == .direct && net.routesA.last?.remote == net.hostB, "\(net.routesA)")
        #expect(net.routesB.last?.via == .direct && net.routesB.last?.remote == net.hostA, "\(net.routesB)")
        #expect(net.failures.isEmpty)
    }

    @Test func fallsBackToTheRelayWithoutADirectPath() {
        let net = FakeNetwork(direct: false)
        net.run(seconds: 3)
        #expect(net.routesA.last?.throughRelay == true, "\(net.routesA)")
        #expect(net.routesB.last?.throughRelay == true, "\(net.routesB)")
        #expect(net.failures.isEmpty)
    }

    @Test func movesToADirectPathThatAppearsLater() {
        let net = FakeNetwork(direct: false)
        net.run(seconds: 3)
        #expect(net.routesA.last?.throughRelay == true)
        net.direct = true
        net.run(seconds: Double(ICEAgent.upgradeInterval) / 1e9 * 2 + 1)
        #expect(net.routesA.last?.via == .direct && net.routesA.last?.remote == net.hostB, "\(net.routesA)")
        #expect(net.routesB.last?.via == .direct, "\(net.routesB)")
    }

    @Test func leavesAFailedDirectPathWithinSeconds() {
        let net = FakeNetwork(direct: true)
        net.run(seconds: 2)
        #expect(net.routesA.last?.via == .direct)
        net.direct = false
        // Consent is lost after ICEAgent.lostAfter (4 s); the standby relayed pair takes over.
        net.run(seconds: 5.5)
        #expect(net.routesA.last?.throughRelay == true, "\(net.routesA)")
        #expect(net.routesB.last?.throughRelay == true, "\(net.routesB)")
    }

    /// aioice (controlling) sends data as soon as its nominating check succeeds; the controlled
    /// agent must have a path by then, before its own check of the pair has come back.
    @Test func theControlledAgentSelectsOnANominatingRequest() {
        let net = FakeNetwork(direct: true)
        var nominated: ICEAgent.Send?
        // Let A's checks and B's answers through, but hold back everything B starts itself.
        for _ in 0..<100 where nominated == nil {
            net.now += 10_000_000
            _ = net.b.tick(now: net.now)
            for s in net.a.tick(now: net.now).sends {
                let isNomination = s.bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().has(STUN.Attribute.useCandidate) }
                if isNomination { nominated = s; break }
                for answer in net.deliver(s, fromA: true) {
                    let isResponse = answer.bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().messageClass != .request }
                    if isResponse { _ = net.deliver(answer, fromA: false) }
                }
            }
        }
        let n = try! #require(nominated)
        #expect(!net.b.pairs.contains { $0.state == .succeeded }, "B's own checks have not come back")
        #expect(net.routesB.isEmpty)
        _ = net.deliver(n, fromA: true)
        #expect(net.routesB.last?.remote == net.hostA, "B has a path as soon as A nominates: \(net.routesB)")
    }

    @Test func checksNeedTheRightCredentials() {
        let net = FakeNetwork(direct: true)
        // B is told a wrong password for A: A's answers fail B's integrity check, so B's own
        // checks never succeed; A's checks still succeed (B answers with its own password).
        net.b.setRemoteCredentials(ufrag: net.a.localUfrag, password: "wrong-password-0123456789")
        net.run(seconds: 3)
        #expect(!net.b.pairs.contains { $0.state == .succeeded })
    }
}
