import Testing
import FerryCore
import FerryWire
@testable import FerryTURN

/// What an allocation leaves in the session log, and `/v1/allocations`' view of it.
@Suite struct AllocationRecords {
    final class Ends {
        var all: [(AllocationRecord, AllocationRecord.End)] = []
    }

    func harness() -> (Harness, Ends) {
        let h = Harness()
        let ends = Ends()
        h.server.onEnd = { ends.all.append(($0, $1)) }
        return (h, ends)
    }

    @Test func expiryWritesOneRecordWithTheTrafficAndTheAge() {
        let (h, ends) = harness()
        let start = h.wallNow
        #expect(h.allocate()?.isSuccess == true)
        let peer = SocketAddress("192.0.2.7:5000")!
        #expect(h.request(STUN.Method.channelBind) { w in
            w.append(STUN.Attribute.channelNumber, uint32: 0x4000 << 16)
            w.append(STUN.Attribute.xorPeerAddress, xorAddress: peer)
        }?.isSuccess == true)
        let key = ClientKey(address: h.client, transport: .udp(listener: 0))
        for _ in 0..<3 { #expect(h.server.channelTarget(client: key, channel: 0x4000, length: 100, now: h.now) != nil) }
        let slot = h.server.table.pointee.byClient[key]!
        let generation = h.server.table.pointee.allocations[Int(slot)].generation
        guard case .channel = h.server.peerRoute(slot: slot, generation: generation, peer: peer, length: 40, now: h.now) else {
            Issue.record("the peer's datagram is routed")
            return
        }
        #expect(h.server.allocationRecords(now: h.now).count == 1)
        h.advance(seconds: 601)  // the default lifetime is 600 s
        h.server.sweep(now: h.now)
        #expect(ends.all.count == 1)
        let (r, reason) = ends.all[0]
        #expect(reason == .expired)
        #expect(r.username == "alice" && r.user == "alice" && r.client == h.client)
        #expect(r.created == start && r.ageSeconds == 601 && r.expiresInSeconds == 0)
        #expect((r.packetsToPeer, r.bytesToPeer, r.packetsToClient, r.bytesToClient) == (3, 300, 1, 40))
        #expect(r.relayed.count == 1 && r.channels == 1)
        #expect(h.server.allocationRecords(now: h.now).isEmpty)
    }

    @Test func eachWayOfEndingHasItsReason() {
        let (h, ends) = harness()
        #expect(h.allocate()?.isSuccess == true)
        #expect(h.request(STUN.Method.refresh) { $0.append(STUN.Attribute.lifetime, uint32: 0) }?.isSuccess == true)
        let other = SocketAddress("203.0.113.9:1000")!
        h.nonce = ""
        #expect(h.allocate(user: "bob", password: "builder", from: other)?.isSuccess == true)
        h.server.clientGone(ClientKey(address: other, transport: .udp(listener: 0)), now: h.now)
        h.nonce = ""
        #expect(h.allocate()?.isSuccess == true)
        h.server.closeAll(now: h.now)
        #expect(ends.all.map(\.1) == [.clientDeleted, .connectionClosed, .shutdown])
        #expect(ends.all.map(\.0.username) == ["alice", "bob", "alice"])
    }

    @Test func theOperatorEndsAllocationsByUser() {
        let (h, ends) = harness()
        let clients = (0..<3).map { SocketAddress("203.0.113.\($0 + 20):4000")! }
        for (i, c) in clients.enumerated() {
            h.nonce = ""
            #expect(h.allocate(user: i == 1 ? "bob" : "alice", password: i == 1 ? "builder" : "wonderland", from: c)?.isSuccess == true)
        }
        #expect(h.server.endAllocations(now: h.now) { $0.user == "alice" } == 2)
        #expect(h.server.activeAllocations == 1)
        #expect(ends.all.allSatisfy { $0.1 == .endedByOperator && $0.0.user == "alice" } && ends.all.count == 2)
        #expect(h.server.allocationRecords(now: h.now).map(\.user) == ["bob"])
        #expect(h.relays.open.count == 1)
    }

    @Test func theUserOfATURNRESTUsernameIsAfterItsExpiry() {
        #expect(AllocationRecord.user(of: "1800000600:alice") == "alice")
        #expect(AllocationRecord.user(of: "1800000600:matrix:@bob:example.org") == "matrix:@bob:example.org")
        #expect(AllocationRecord.user(of: "alice") == "alice")
        #expect(AllocationRecord.user(of: "team:alice") == "team:alice")
    }
}
