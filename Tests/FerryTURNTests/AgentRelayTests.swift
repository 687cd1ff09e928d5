import Testing
import FerryClient
import FerryCore
import FerryWire
import FerryTURN

/// `ferry tunnel`'s TURN relay (`AgentRelay`, FerryClient) against FerryTURN's server state
/// machine, both pure, on one fake clock. The "sockets" are the relay's actions: every `.send`
/// goes through `TURNServer.handle` (or is dropped, for a server that does not answer) and its
/// answer comes back through `receive`; a `.connect` is answered with `connected` or
/// `connectFailed`, as the tunnel's helper thread would.
@Suite struct AgentRelayAgainstServer {
    static let near = SocketAddress("198.51.100.1:3478")!
    static let far = SocketAddress("198.51.100.2:3478")!
    static let addresses = ["near.example": near, "far.example": far]

    final class Rig {
        let h: Harness
        var relay = AgentRelay(icePort: 41000) { u in AgentRelayAgainstServer.addresses[u.host] }
        /// Every action that is not a send, in order (what the tunnel would carry out).
        var done: [AgentRelay.Action] = []
        /// Bytes the relay sent, answered or not.
        var sent: [[UInt8]] = []
        /// Whether the server answers (false: a relay host that drops everything).
        var answering = true

        init(_ relays: [SignalClient.Relay], harness: Harness = Harness()) {
            h = harness
            relay.configure(relays)
        }

        static func alice(_ urls: [String], password: String = "wonderland") -> [SignalClient.Relay] {
            [SignalClient.Relay(region: "test", urls: urls, username: "alice", credential: password, expires: 0)]
        }

        /// Carries out `actions`: sends through the server until no more answers come.
        func run(_ actions: [AgentRelay.Action], server: Harness? = nil) {
            var queue = actions
            while !queue.isEmpty {
                let a = queue.removeFirst()
                guard case .send(let bytes) = a else {
                    done.append(a)
                    continue
                }
                sent.append(bytes)
                guard answering, let reply = (server ?? h).send(bytes).reply else { continue }
                reply.bytes.withUnsafeBytes { raw in queue += relay.receive(try! STUNMessage.parse(raw).get(), now: h.now) }
            }
        }

        var logs: [String] { done.compactMap { if case .log(let l) = $0 { l } else { nil } } }
        var gatheredCount: Int { done.filter { $0 == .gathered }.count }
        var connects: [(ServerURL, Int)] { done.compactMap { if case .connect(let u, let n) = $0 { (u, n) } else { nil } } }
    }

    @Test func allocatesOverUDPAndOffersTheRelayedAndReflexiveCandidates() {
        let r = Rig(Rig.alice(["turn:near.example:3478?transport=udp"]))
        r.run(r.relay.start(now: r.h.now))
        #expect(r.gatheredCount == 1, "\(r.done)")
        #expect(r.relay.isAllocated && r.relay.udpServer == Self.near)
        #expect(r.relay.transportDescription == "udp \(Self.near)")
        #expect(r.relay.candidate?.kind == .relay && r.relay.candidate?.address.ip == IPAddress("198.51.100.1"))
        // A relay candidate never discloses the host's address; the mapped one is the srflx.
        #expect(r.relay.candidate?.related == ICECandidate.undisclosed)
        #expect(r.relay.reflexive?.address == r.h.client && r.relay.reflexive?.related?.port == 41000)
    }

    @Test func aStreamIsConnectedOffTheLoopAndALateConnectionIsIgnored() {
        let r = Rig(Rig.alice(["turns:near.example:443?transport=tcp"]))
        r.run(r.relay.start(now: r.h.now))
        guard let (url, attempt) = r.connects.first else {
            Issue.record("no connect: \(r.done)")
            return
        }
        #expect(url.transport == .tls && r.gatheredCount == 0)
        // A connection for an earlier attempt is dropped (the caller closes it).
        #expect(r.relay.connected(attempt: attempt - 1, tls: true, server: Self.near, now: r.h.now) == nil)
        #expect(r.relay.connectFailed(attempt: attempt - 1, url: url, reason: "late", now: r.h.now).isEmpty)
        r.run(r.relay.connected(attempt: attempt, tls: true, server: Self.near, now: r.h.now) ?? [])
        #expect(r.relay.isAllocated && r.relay.isStream && r.relay.transportDescription == "tls \(Self.near)")
        #expect(r.relay.reflexive == nil, "over a stream the mapped address is the connection's, not the ICE socket's")
        // Starting over closes the stream it ran on.
        r.done = []
        r.run(r.relay.start(now: r.h.now))
        #expect(r.done.first == .closeStream && !r.relay.isAllocated && r.relay.candidate == nil)
    }

    @Test func aRefusedAllocationMovesToTheNextURLAndNoneLeftEndsGathering() {
        let r = Rig(Rig.alice(["turn:near.example:3478?transport=udp", "turn:near.example:3478?transport=tcp"], password: "wrong"))
        r.run(r.relay.start(now: r.h.now))
        #expect(r.logs.contains { $0.contains("allocate over udp") && $0.contains("401") }, "\(r.logs)")
        guard let (url, attempt) = r.connects.first else {
            Issue.record("the TCP URL was not tried: \(r.done)")
            return
        }
        #expect(url.transport == .tcp)
        r.run(r.relay.connectFailed(attempt: attempt, url: url, reason: "connection refused", now: r.h.now))
        #expect(r.gatheredCount == 1 && r.relay.candidate == nil)
        #expect(r.logs.last?.contains("no TURN server reachable (2 tried)") == true, "\(r.logs)")
    }

    @Test func aSilentServerIsGivenUpAfterTheAttemptTimeout() {
        let r = Rig(Rig.alice(["turn:far.example:3478?transport=udp", "turn:far.example:3478?transport=tcp"]))
        r.answering = false
        r.run(r.relay.start(now: r.h.now))
        #expect(r.relay.udpServer == Self.far && r.connects.isEmpty)
        r.h.now += RelaySelection.attemptTimeout / 2
        r.run(r.relay.tick(now: r.h.now))
        #expect(r.connects.isEmpty, "still waiting within the timeout")
        r.h.now += RelaySelection.attemptTimeout
        r.run(r.relay.tick(now: r.h.now))
        #expect(r.logs.contains("relay: no answer over udp \(Self.far) within 3 s"), "\(r.logs)")
        #expect(r.connects.first?.0.transport == .tcp && r.relay.udpServer == nil)
    }

    @Test func permissionsGoOnePerIPv4AddressAndChannelsFrameWhatICESends() {
        let r = Rig(Rig.alice(["turn:near.example:3478?transport=udp"]))
        r.run(r.relay.start(now: r.h.now))
        let peer = SocketAddress("192.0.2.10:7000")!
        let before = r.sent.count
        r.run(r.relay.permit([peer.ip, peer.ip, IPAddress("2001:db8::1")!, IPAddress("192.0.2.11")!], now: r.h.now))
        #expect(r.sent.count - before == 2, "one request per distinct IPv4 address")
        // Before a channel: a Send indication; after: ChannelData with the peer's channel.
        let payload: [UInt8] = [1, 2, 3, 4, 5]
        let indication = r.relay.frame(payload, to: peer)!
        #expect(indication.withUnsafeBytes { (try? STUNMessage.parse($0).get())?.method } == STUN.Method.send)
        r.run(r.relay.bindChannel(to: peer, now: r.h.now))
        guard let n = r.relay.channel(for: peer) else {
            Issue.record("no channel: \(r.done)")
            return
        }
        #expect(r.relay.peer(forChannel: n) == peer)
        #expect(r.relay.bindChannel(to: peer, now: r.h.now).isEmpty, "bound once")
        #expect(r.relay.frame(payload, to: peer) == [UInt8(n >> 8), UInt8(n & 0xff), 0, 5] + payload)
        // The server routes that channel to that peer.
        #expect(r.h.server.channelTarget(client: ClientKey(address: r.h.client, transport: .udp(listener: 0)),
                                         channel: n, length: 5, now: r.h.now)?.peer == peer)
    }

    @Test func overAStreamChannelDataIsPaddedToFourBytes() {
        let r = Rig(Rig.alice(["turn:near.example:3478?transport=tcp"]))
        r.run(r.relay.start(now: r.h.now))
        r.run(r.relay.connected(attempt: r.connects[0].1, tls: false, server: Self.near, now: r.h.now) ?? [])
        let peer = SocketAddress("192.0.2.10:7000")!
        r.run(r.relay.permit([peer.ip], now: r.h.now))
        r.run(r.relay.bindChannel(to: peer, now: r.h.now))
        let frame = r.relay.frame([9, 9, 9, 9, 9], to: peer)
        #expect(frame?.count == 12 && frame?[3] == 5 && frame?.suffix(3) == [0, 0, 0], "\(String(describing: frame))")
    }

    @Test func aServerThatLostTheAllocationMakesTheAgentGatherAgain() {
        let r = Rig(Rig.alice(["turn:near.example:3478?transport=udp"]))
        r.run(r.relay.start(now: r.h.now))
        #expect(r.relay.isAllocated)
        // ferryd restarted: a server with the same secrets but no allocation answers the refresh.
        let restarted = Harness()
        r.h.now += 550 * 1_000_000_000
        r.h.wallNow += 550
        restarted.now = r.h.now
        restarted.wallNow = r.h.wallNow
        r.run(r.relay.tick(now: r.h.now), server: restarted)
        #expect(r.done.last == .regather, "\(r.done)")
        #expect(r.logs.contains { $0.hasPrefix("relay: refresh failed (437") }, "\(r.logs)")
    }
}
