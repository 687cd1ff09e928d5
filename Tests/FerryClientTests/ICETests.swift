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

    /// aioice (controlling) sends data as soon as its nominating check succeeds. The controlled
    /// agent still selects a pair only once its own check of it has succeeded: the nomination
    /// triggers that check, and its answer selects the pair (one round trip later).
    @Test func theControlledAgentSelectsANominatedPairOnlyAfterItsOwnCheck() {
        let net = FakeNetwork(direct: true)
        let n = try! #require(Self.firstNomination(net))
        #expect(!net.b.pairs.contains { $0.state == .succeeded }, "B's own checks have not come back")
        #expect(net.routesB.isEmpty)
        _ = net.deliver(n, fromA: true)
        #expect(net.routesB.isEmpty, "a nominating request alone selects nothing: \(net.routesB)")
        #expect(net.b.pairs.first { $0.remote.address == net.hostA && $0.via == .direct }?.state == .inProgress,
                "its own check of the nominated pair is in flight")
        // B's check reaches A, A answers, B selects (within its retransmission schedule).
        net.run(seconds: 1)
        #expect(net.routesB.first?.remote == net.hostA, "selected when its own check succeeds: \(net.routesB)")
    }

    /// Runs A's checks with B's answers (but nothing B starts itself) until A nominates.
    static func firstNomination(_ net: FakeNetwork) -> ICEAgent.Send? {
        var nominated: ICEAgent.Send?
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
        return nominated
    }

    /// The attack of the issue: a captured nominating check, replayed from an attacker's
    /// address every 100 ms, never selects that address, and the path stays where it is.
    @Test func aReplayedNominatingCheckNeverSelectsTheReplayersAddress() {
        let net = FakeNetwork(direct: true)
        let n = try! #require(Self.firstNomination(net))
        let attacker = SocketAddress("203.0.113.66:4444")!
        var answersToAttacker = 0
        for step in 0..<3000 {
            net.run(seconds: 0.01)
            if step % 10 == 0 {
                let r = n.bytes.withUnsafeBytes { raw in
                    net.b.receive(try! STUNMessage.parse(raw).get(), from: attacker, via: .direct, now: net.now)
                }
                net.record(r.events, a: false)
                answersToAttacker += r.sends.filter { $0.to == attacker }.count
            }
            #expect(net.b.selectedPair?.remote.address != attacker, "step \(step)")
        }
        #expect(!net.routesB.contains { $0.remote == attacker }, "\(net.routesB)")
        #expect(net.routesB.last?.remote == net.hostA)
        // Its own check to the attacker's address fails (nobody there knows the password):
        // the answers and checks it sent there are a handful, not one per replay.
        // No amplification: at most one answer per replay, plus one check's retransmissions
        // (6) per recheck interval (3 s) to that address.
        #expect(answersToAttacker <= 300 + 6 * 11, "\(answersToAttacker) sends to the replaying address for 300 replays")
    }

    /// 2,000 replays of a valid check from as many spoofed sources: remotes and pairs stay
    /// capped, and almost nothing is reflected at the spoofed addresses.
    @Test func peerReflexiveLearningIsCappedAndRateLimited() {
        let net = FakeNetwork(direct: true)
        let n = try! #require(Self.firstNomination(net))
        var reflected = 0
        for k in 0..<2000 {
            if k % 20 == 0 { net.now += 10_000_000 }
            let spoofed = SocketAddress(ip: IPAddress(ipv4: 0xCB00_7100 | UInt32(k % 250 + 1)), port: UInt16(10_000 + k))
            let r = n.bytes.withUnsafeBytes { raw in
                net.b.receive(try! STUNMessage.parse(raw).get(), from: spoofed, via: .direct, now: net.now)
            }
            reflected += r.sends.count
        }
        #expect(net.b.remotes.count <= ICEAgent.maxRemotes)
        #expect(net.b.pairs.count <= ICEAgent.maxPairs)
        #expect(net.b.refusedPeerReflexive > 1900)
        // 1 s of replays: the burst plus the rate, an answer and a triggered check each.
        #expect(reflected <= 2 * Int(ICEAgent.peerReflexiveBurst + ICEAgent.peerReflexivePerSecond + 1), "\(reflected)")
    }

    @Test func unusableRemoteCandidatesAreRefused() {
        var agent = ICEAgent(controlling: true, now: 1)
        agent.addLocal(ICECandidate(kind: .host, address: SocketAddress("10.0.0.1:1000")!))
        for text in ["0.0.0.0:5", "224.0.0.1:5", "255.255.255.255:5", "169.254.1.1:5", "10.0.0.9:0"] {
            agent.addRemote(ICECandidate(kind: .host, address: SocketAddress(text)!))
        }
        #expect(agent.remotes.isEmpty && agent.refusedRemotes == 5)
        // Loopback is a candidate of this host only: no pair with a non-loopback local.
        agent.addRemote(ICECandidate(kind: .host, address: SocketAddress("127.0.0.1:7")!))
        #expect(agent.pairs.isEmpty)
        for k in 0..<100 { agent.addRemote(ICECandidate(kind: .host, address: SocketAddress(ip: IPAddress(ipv4: 0x0A01_0000 | UInt32(k + 1)), port: 9))) }
        #expect(agent.remotes.count == ICEAgent.maxRemotes)
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
