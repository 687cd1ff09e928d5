import Testing
import FerryCore
import FerryWire
@testable import FerryRelay

/// Forwarding by WireGuard's own fields: mac1 for initiations, learned receiver indices for the
/// rest; only between the bound ends of one session.
@Suite struct Sessions {
    var a = TestPeer("203.0.113.1:51820"), b = TestPeer("198.51.100.2:40000"), c = TestPeer("192.0.2.3:51820")

    @Test func aHandshakeTeachesTheIndicesAndDataFlowsBothWays() {
        var s = bound([(a, b)])
        let (ia, ib) = handshake(&s, a, b)
        #expect(s.route(WG.data(receiver: ib), from: a.address, at: 101) == .forward(b.address))
        #expect(s.route(WG.data(receiver: ia), from: b.address, at: 101) == .forward(a.address))
        var cookie = [UInt8](repeating: 0, count: 64); cookie[0] = 3
        withUnsafeBytes(of: ia.littleEndian) { for i in 0..<4 { cookie[4 + i] = $0[i] } }
        #expect(s.route(cookie, from: b.address, at: 101) == .forward(a.address))
        // An index b never sent from b's port with two sessions on it: nowhere to go.
        var two = bound([(a, b), (c, b)])
        let (_, ib2) = handshake(&two, a, b)
        #expect(two.route(WG.data(receiver: ib2 &+ 1), from: b.address, at: 101) == .drop(.unknownIndex))
        #expect(two.route(WG.data(receiver: ib2), from: b.address, at: 101) == .drop(.unknownIndex), "b's own index leads to b, not from b")
    }

    @Test func aSpoofedSourceCannotInjectOrSteer() {
        var s = bound([(a, b), (c, b)])
        let (_, ib) = handshake(&s, a, b)
        // c knows b's index (an on-path observer would) but sends from its own bound address: it
        // reaches c's own partner at most (c's only session), never a's session.
        #expect(s.route(WG.data(receiver: ib), from: c.address, at: 101) == .forward(b.address))
        #expect(s.route(WG.data(receiver: ib), from: a.address, at: 101) == .forward(b.address))
        // An unbound address gets nothing through, whatever it sends.
        let stranger = SocketAddress("192.0.2.99:1234")!
        #expect(s.route(WG.data(receiver: ib), from: stranger, at: 101) == .drop(.unknownIndex))
        #expect(s.route(WG.initiation(sender: 5, to: b.key), from: stranger, at: 101) == .drop(.unboundSource))
        // c's initiation to a (no session c–a) names nobody c is bound with.
        #expect(s.route(WG.initiation(sender: 5, to: a.key), from: c.address, at: 101) == .drop(.mac1Mismatch))
        // A response must carry the initiator's mac1.
        let ia2 = UInt32(77)
        #expect(s.route(WG.initiation(sender: ia2, to: b.key), from: a.address, at: 102) == .forward(b.address))
        #expect(s.route(WG.response(sender: 9, receiver: ia2, to: c.key), from: b.address, at: 102) == .drop(.mac1Mismatch))
    }

    @Test func mac1PicksThePartnerAmongSessionsOnOnePort() {
        // b's one WireGuard port talks to a and to c through the relay.
        var s = bound([(a, b), (c, b)])
        #expect(s.route(WG.initiation(sender: 1, to: a.key), from: b.address, at: 100) == .forward(a.address))
        #expect(s.route(WG.initiation(sender: 2, to: c.key), from: b.address, at: 100) == .forward(c.address))
    }

    @Test func anInitiationWaitsForThePartnersBind() {
        var s = RelaySessions(limits: RelaySessions.Limits())
        #expect(s.bind(network: "acme", key: a.wg, partner: b.wg, address: a.address, now: 100) == .waiting)
        #expect(s.route(WG.initiation(sender: 1, to: b.key), from: a.address, at: 100) == .drop(.partnerUnbound))
        #expect(s.bind(network: "acme", key: b.wg, partner: a.wg, address: b.address, now: 100) == .active)
        #expect(s.route(WG.initiation(sender: 1, to: b.key), from: a.address, at: 100) == .forward(b.address))
    }

    @Test func dataWithoutAHandshakeFollowsTheSourcesOnlySession() {
        var s = bound([(a, b)])
        // No handshake seen (the relay restarted): each side's data goes to its one partner.
        #expect(s.route(WG.data(receiver: 77), from: a.address, at: 100) == .forward(b.address))
        #expect(s.route(WG.data(receiver: 88), from: b.address, at: 100) == .forward(a.address))
        #expect(s.indexCount == 2)
        // Not handshakes, not cookie replies (they carry mac1 or are answers), not half-bound sessions.
        var cookie = [UInt8](repeating: 0, count: 64); cookie[0] = 3
        #expect(s.route(cookie, from: a.address, at: 100) == .drop(.unknownIndex))
        var half = RelaySessions(limits: RelaySessions.Limits())
        _ = half.bind(network: "acme", key: a.wg, partner: b.wg, address: a.address, now: 100)
        #expect(half.route(WG.data(receiver: 77), from: a.address, at: 100) == .drop(.unknownIndex))
    }

    @Test func aNATRebindingIsAFreshBindThatKeepsTheIndices() {
        var s = bound([(a, b)])
        let (ia, ib) = handshake(&s, a, b)
        let moved = SocketAddress("203.0.113.1:60001")!
        #expect(s.route(WG.data(receiver: ib), from: moved, at: 101) == .drop(.unknownIndex))
        #expect(s.bind(network: "acme", key: a.wg, partner: b.wg, address: moved, now: 101) == .active)
        #expect(s.route(WG.data(receiver: ib), from: moved, at: 101) == .forward(b.address))
        #expect(s.route(WG.data(receiver: ib), from: a.address, at: 101) == .drop(.unknownIndex))
        #expect(s.route(WG.data(receiver: ia), from: b.address, at: 101) == .forward(moved))
        #expect(s.route(WG.initiation(sender: 3, to: b.key), from: moved, at: 101) == .forward(b.address))
    }

    @Test func indicesExpireAndTheRingKeepsTheNewest() {
        // a's port has two sessions, so an index the relay does not know has nowhere to go.
        var s = bound([(a, b), (a, c)])
        let first = handshake(&s, a, b)
        var later: (UInt32, UInt32) = (0, 0)
        for _ in 0..<RelaySessions.ringSize { later = handshake(&s, a, b) }
        #expect(s.route(WG.data(receiver: first.1), from: a.address, at: 101) == .drop(.unknownIndex))
        #expect(s.route(WG.data(receiver: later.1), from: a.address, at: 101) == .forward(b.address))
        #expect(s.indexCount == 2 * RelaySessions.ringSize)
        // Traffic keeps both ends alive; the indices still die with their keypairs.
        for t in [150, 250, 350, 100 + RelaySessions.indexLifetime + 1] as [UInt32] {
            _ = s.bind(network: "acme", key: a.wg, partner: b.wg, address: a.address, now: t)
            _ = s.bind(network: "acme", key: b.wg, partner: a.wg, address: b.address, now: t)
            _ = s.bind(network: "acme", key: a.wg, partner: c.wg, address: a.address, now: t)
            _ = s.bind(network: "acme", key: c.wg, partner: a.wg, address: c.address, now: t)
            s.sweep(now: t)
        }
        #expect(s.indexCount == 0 && s.activeCount == 2)
        #expect(s.route(WG.data(receiver: later.1), from: a.address, at: 500) == .drop(.unknownIndex))
    }

    @Test func idleEndsAreUnboundAndTheirSessionEnds() {
        var limits = RelaySessions.Limits()
        limits.idleTimeout = 60
        var s = bound([(a, b)], limits: limits)
        let (_, ib) = handshake(&s, a, b)
        // a keeps sending; b is silent.
        for t in stride(from: UInt32(110), through: 160, by: 10) {
            #expect(s.route(WG.data(receiver: ib), from: a.address, at: t) == .forward(b.address))
            #expect(s.sweep(now: t) == 0)
        }
        #expect(s.sweep(now: 161) == 1)  // b: last seen at 100
        #expect(s.activeCount == 0 && s.sessionCount == 1 && s.indexCount == 0)
        #expect(s.route(WG.data(receiver: ib), from: a.address, at: 162) == .drop(.unknownIndex))
        #expect(s.sweep(now: 220) == 0)
        #expect(s.sweep(now: 221) == 1)  // a: last seen at 160
        #expect(s.sessionCount == 0)
    }

    @Test func limitsBoundWhatOnePeerOrNetworkHolds() {
        var limits = RelaySessions.Limits()
        limits.sessionsPerPeer = 3
        limits.sessionsPerNetwork = 5
        limits.maxSessions = 6
        var s = RelaySessions(limits: limits)
        let me = TestPeer("192.0.2.1:1")
        var results: [RelaySessions.BindResult] = []
        for i in 0..<5 { results.append(s.bind(network: "acme", key: me.wg, partner: TestPeer("192.0.2.2:\(i + 1)").wg, address: me.address, now: 1)) }
        #expect(results == [.waiting, .waiting, .waiting, .refused(.perPeer), .refused(.perPeer)])
        for i in 0..<3 { _ = s.bind(network: "acme", key: TestPeer("192.0.2.3:1").wg, partner: TestPeer("192.0.2.4:\(i + 1)").wg, address: me.address, now: 1) }
        #expect(s.sessionCount == 5)
        #expect(s.bind(network: "acme", key: TestPeer("192.0.2.5:1").wg, partner: me.wg, address: me.address, now: 1) == .refused(.perNetwork))
        #expect(s.bind(network: "other", key: TestPeer("192.0.2.5:1").wg, partner: me.wg, address: me.address, now: 1) == .waiting)
        #expect(s.bind(network: "third", key: TestPeer("192.0.2.5:1").wg, partner: me.wg, address: me.address, now: 1) == .refused(.sessions))
        #expect(s.bind(network: "acme", key: me.wg, partner: me.wg, address: me.address, now: 1) == .refused(.samePeer))
    }

    @Test func bandwidthPerSessionDropsTheExcess() {
        var limits = RelaySessions.Limits()
        limits.bandwidth = 1000
        limits.burst = 1000
        var s = bound([(a, b)], limits: limits)
        let (_, ib) = handshake(&s, a, b)  // 148 + 92 bytes spent
        var forwarded = 0, dropped = 0
        for _ in 0..<20 {
            switch s.route(WG.data(receiver: ib, payload: 48), from: a.address, at: 100) {
            case .forward: forwarded += 1
            case .drop(let r): #expect(r == .bandwidth); dropped += 1
            }
        }
        #expect(forwarded == (1000 - 240) / 80 && dropped == 20 - forwarded)
    }
}

@Suite struct SessionMemory {
    /// What an idle session costs in its slot (docs/benchmarks.md has the whole figure: the slot
    /// plus its entries in the tables).
    @Test func aSessionSlotStaysSmall() {
        #expect(MemoryLayout<RelaySessions.Session>.stride <= 256, "\(MemoryLayout<RelaySessions.Session>.stride) bytes")
    }
}
