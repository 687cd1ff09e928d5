import Testing
import FerryCore
@testable import FerryClient

/// When WireGuard talks to a peer itself, and when the agent takes the path back: a fake clock
/// and made-up transfer counters, as `wg show … dump` would give them.
@Suite struct EndpointHandoffRules {
    let peer = SocketAddress("203.0.113.6:51820")!
    let relay = SocketAddress("198.51.100.1:3479")!
    let local = SocketAddress("127.0.0.1:40000")!
    let s: UInt64 = 1_000_000_000

    @Test func pointingAndTakingBackHappenOncePerChange() {
        var h = EndpointHandoff()
        #expect(h.want(nil) == .none, "already on the agent")
        #expect(h.want(peer) == .point(peer))
        #expect(h.want(peer) == .none)
        #expect(h.want(relay) == .point(relay), "the path moved onto the native relay")
        #expect(h.want(nil) == .takeBack)
        #expect(h.handedOff == nil)
    }

    @Test func silenceAfterSendingTakesThePathBackUntilTheRouteChanges() {
        var h = EndpointHandoff()
        _ = h.want(peer)
        #expect(h.observe(rx: 100, tx: 100, now: 10 * s) == .none, "the baseline")
        #expect(h.observe(rx: 100, tx: 900, now: 14 * s) == .none, "sent, nothing back, but not 5 s yet")
        #expect(h.observe(rx: 100, tx: 1800, now: 16 * s) == .takeBack)
        #expect(h.refused && h.handedOff == nil)
        #expect(h.want(peer) == .none, "refused: the same path is not handed off again")
        h.routeChanged()
        #expect(h.want(peer) == .point(peer))
    }

    @Test func anythingReceivedProvesThePath() {
        var h = EndpointHandoff()
        _ = h.want(relay)
        _ = h.observe(rx: 0, tx: 0, now: 10 * s)
        for t in stride(from: UInt64(12), through: 40, by: 2) {
            #expect(h.observe(rx: t * 10, tx: t * 20, now: t * s) == .none)
        }
        // An idle path (nothing sent) is never taken back for silence.
        var idle = EndpointHandoff()
        _ = idle.want(peer)
        _ = idle.observe(rx: 5, tx: 5, now: 0)
        #expect(idle.observe(rx: 5, tx: 5, now: 60 * s) == .none)
    }

    @Test func roamingPastTheAgentIsNoticedOnlyWhenNotHandedOff() {
        var h = EndpointHandoff()
        #expect(h.roamed(peer, local: local))
        #expect(!h.roamed(local, local: local))
        #expect(!h.roamed(nil, local: local))
        _ = h.want(peer)
        #expect(!h.roamed(peer, local: local), "WireGuard is where the agent pointed it")
    }
}

/// Which endpoint WireGuard may use itself, per route.
@Suite struct HandoffEndpoints {
    static let peer = SocketAddress("203.0.113.7:40000")!
    static let relay = SocketAddress("198.51.100.1:3479")!

    @Test func each_route_gives_its_endpoint() {
        typealias H = EndpointHandoff
        let p = HandoffEndpoints.peer
        // A bound native relay wins over any route.
        #expect(H.endpoint(direct: false, remote: p, remoteKind: .relay, remoteWireGuardPort: 51820, sharedPort: true, nativeRelay: HandoffEndpoints.relay) == HandoffEndpoints.relay)
        // Relayed through TURN: the agent carries it.
        #expect(H.endpoint(direct: false, remote: p, remoteKind: .relay, remoteWireGuardPort: 51820, sharedPort: true, nativeRelay: nil) == nil)
        // On the shared port, the checked pair as it is, whatever its kind.
        #expect(H.endpoint(direct: true, remote: p, remoteKind: .srflx, remoteWireGuardPort: 51820, sharedPort: true, nativeRelay: nil) == p)
        // Without it, only a host pair, at the peer's WireGuard port.
        #expect(H.endpoint(direct: true, remote: p, remoteKind: .host, remoteWireGuardPort: 51820, sharedPort: false, nativeRelay: nil)
                == SocketAddress("203.0.113.7:51820")!)
        #expect(H.endpoint(direct: true, remote: p, remoteKind: .srflx, remoteWireGuardPort: 51820, sharedPort: false, nativeRelay: nil) == nil)
        #expect(H.endpoint(direct: true, remote: p, remoteKind: .host, remoteWireGuardPort: nil, sharedPort: false, nativeRelay: nil) == nil)
    }
}
