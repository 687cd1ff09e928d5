import Testing
import FerryCore
import FerryWire
import FerryTURN

/// The kernel's channel maps, as a dictionary: what `TURNFastPath` put there, and counters a
/// test advances as the kernel would.
struct FakeChannelTable: ChannelFlowTable {
    var entries: [TURNFastPath.Key: TURNFastPath.Entry] = [:]
    var counts: [UInt32: (packets: UInt64, bytes: UInt64)] = [:]
    var capacity = Int.max

    mutating func set(_ key: TURNFastPath.Key, _ entry: TURNFastPath.Entry) -> Bool {
        guard entries[key] != nil || entries.count < capacity else { return false }
        entries[key] = entry
        return true
    }
    mutating func remove(_ key: TURNFastPath.Key) { entries[key] = nil }
    func read(counter: UInt32) -> (packets: UInt64, bytes: UInt64) { counts[counter] ?? (0, 0) }
    mutating func reset(counter: UInt32) { counts[counter] = (0, 0) }

    /// The kernel forwarding `packets` of `bytes` each under the entry `key`.
    mutating func forward(_ key: TURNFastPath.Key, packets: UInt64, bytes: UInt64) {
        let counter: UInt32
        switch entries[key]! {
        case .toPeer(_, _, let c, _), .toClient(_, _, _, _, let c, _): counter = c
        }
        let old = counts[counter] ?? (0, 0)
        counts[counter] = (old.packets + packets, old.bytes + packets * bytes)
    }
}

/// A worker's TURN server, its fast-path mirror and the fake kernel table, as TURNService wires
/// them (TURNService+FastPath).
final class FastPathRig {
    let h: Harness
    var mirror = TURNFastPath(capacity: 4, counterOffset: 10, listeners: [SocketAddress("198.51.100.1:3478")!])
    var table = FakeChannelTable()
    var ended: [AllocationRecord] = []
    let peer = SocketAddress("192.0.2.10:5000")!

    init(settings: (inout TURNSettings) -> Void = { _ in }, policy: PeerPolicy = PeerPolicy()) {
        h = Harness(settings: settings, policy: policy)
        h.server.mirrorsFastPath = true
        // unowned: the rig owns the harness, whose server holds these closures and runs them
        // only inside the rig's own calls (requests, sync, collect).
        h.server.willEnd = { [unowned self] slot in _ = self.mirror.settle(slot, self.h.server, table: self.table) }
        h.server.onEnd = { [unowned self] record, _ in self.ended.append(record) }
    }

    @discardableResult func sync() -> TURNFastPath.Forwarded { mirror.sync(h.server, table: &table, now: h.now) }
    @discardableResult func collect() -> TURNFastPath.Forwarded { mirror.collect(h.server, table: &table, now: h.now) }

    /// An allocation with channel 0x4001 to `peer`; returns the relayed address.
    func bound() -> SocketAddress {
        let relayed = h.allocate()!.address(STUN.Attribute.xorRelayedAddress)!
        #expect(bind(0x4001, peer)?.isSuccess == true)
        sync()
        return relayed
    }

    func bind(_ number: UInt16, _ to: SocketAddress) -> Harness.Reply? {
        h.request(STUN.Method.channelBind) { w in
            w.append(STUN.Attribute.channelNumber, uint32: UInt32(number) << 16)
            w.append(STUN.Attribute.xorPeerAddress, xorAddress: to)
        }
    }

    var toPeer: TURNFastPath.Key { .toPeer(client: h.client, serverPort: 3478, channel: 0x4001) }
    func toClient(_ relayed: SocketAddress) -> TURNFastPath.Key { .toClient(peer: peer, relayPort: relayed.port) }
}

@Suite struct TURNFastPathTests {
    static let second: UInt64 = 1_000_000_000

    @Test func aBoundChannelIsInTheKernelBothWaysUntilItsFirstLapse() {
        let r = FastPathRig()
        let relayed = r.bound()
        #expect(r.mirror.channels == 1 && r.table.entries.count == 2)
        // The permission (300 s) lapses before the channel (600 s) and the allocation (600 s).
        let lapse = r.h.now + 300 * TURNFastPathTests.second
        #expect(r.table.entries[r.toPeer] == .toPeer(relay: SocketAddress(ip: IPAddress("198.51.100.1")!, port: relayed.port), peer: r.peer,
                                                      counter: 10, expiry: lapse))
        #expect(r.table.entries[r.toClient(relayed)] == .toClient(client: r.h.client, server: SocketAddress("198.51.100.1:3478")!,
                                                                   relayIP: IPAddress("198.51.100.1")!, channel: 0x4001, counter: 11, expiry: lapse))
        // A CreatePermission refresh moves the lapse 300 s on from now.
        r.h.advance(seconds: 100)
        #expect(r.h.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: r.peer) }?.isSuccess == true)
        r.sync()
        guard case .toPeer(_, _, _, let expiry) = r.table.entries[r.toPeer]! else { Issue.record("no entry"); return }
        #expect(expiry == r.h.now + 300 * TURNFastPathTests.second, "still before the channel's and the allocation's (500 s from now)")
    }

    @Test func aLapsedPermissionLeavesTheKernelAtTheNextCollect() {
        let r = FastPathRig()
        _ = r.bound()
        r.h.advance(seconds: 299)
        r.collect()
        #expect(r.table.entries.count == 2)
        r.h.advance(seconds: 1)
        r.collect()
        #expect(r.table.entries.isEmpty && r.mirror.channels == 0)
    }

    @Test func deletionTakesEntriesOutAndItsKernelCountsJoinTheRecord() {
        let r = FastPathRig()
        let relayed = r.bound()
        r.table.forward(r.toPeer, packets: 3, bytes: 100)
        r.table.forward(r.toClient(relayed), packets: 2, bytes: 50)
        #expect(r.h.request(STUN.Method.refresh) { $0.append(STUN.Attribute.lifetime, uint32: 0) }?.isSuccess == true)
        r.sync()
        #expect(r.table.entries.isEmpty)
        let record = r.ended.first!
        #expect(record.packetsToPeer == 3 && record.bytesToPeer == 300 && record.packetsToClient == 2 && record.bytesToClient == 100)
    }

    @Test func kernelForwardingIsReadBackOnceIntoTheAllocationAndTheTotals() {
        let r = FastPathRig()
        let relayed = r.bound()
        r.table.forward(r.toPeer, packets: 5, bytes: 1000)
        r.table.forward(r.toClient(relayed), packets: 4, bytes: 10)
        var got = r.collect()
        #expect(got.toPeer == (5, 5000) && got.toClient == (4, 40))
        got = r.collect()
        #expect(got.toPeer == (0, 0) && got.toClient == (0, 0), "deltas, not totals")
        let a = r.h.server.table.pointee.allocations[0]
        #expect(a.packetsToPeer == 5 && a.bytesToPeer == 5000 && a.packetsToClient == 4 && a.bytesToClient == 40)
    }

    @Test func aReloadThatDeniesThePeerEndsItsChannelInBothPaths() {
        let r = FastPathRig()
        _ = r.bound()
        r.h.server.update(credentials: r.h.server.credentials, policy: PeerPolicy(deny: [CIDR("192.0.2.0/24")!]))
        r.sync()
        #expect(r.table.entries.isEmpty)
        let key = ClientKey(address: r.h.client, transport: .udp(listener: 0))
        #expect(r.h.server.channelTarget(client: key, channel: 0x4001, length: 10, now: r.h.now) == nil)
        if case .drop = r.h.server.peerRoute(slot: 0, generation: r.h.server.table.pointee.allocations[0].generation, peer: r.peer,
                                              length: 10, now: r.h.now) {} else { Issue.record("the peer's datagrams still reach the client") }
    }

    @Test func anAllocationOverItsBandwidthLeavesUntilItsBucketIsFull() {
        let r = FastPathRig(settings: { $0.bandwidthPerAllocation = 1000; $0.bandwidthBurst = 2000 })
        _ = r.bound()
        r.table.forward(r.toPeer, packets: 10, bytes: 500)
        r.h.advance(seconds: 1)
        r.collect()
        #expect(r.table.entries.isEmpty, "5000 bytes against a 2000-byte bucket")
        r.h.advance(seconds: 3)
        r.collect()
        #expect(r.table.entries.isEmpty, "not full yet: -3000 + 3000")
        r.h.advance(seconds: 2)
        r.collect()
        #expect(r.table.entries.count == 2, "full again")
    }

    @Test func onlyPeersOutsideTheRelayAndKnownListenersGoIn() {
        let own = IPAddress("198.51.100.1")!
        let r = FastPathRig(policy: PeerPolicy(allow: [CIDR("198.51.100.1/32")!], ownRelayAddresses: [own]))
        let relayed = r.h.allocate()!.address(STUN.Attribute.xorRelayedAddress)!
        #expect(r.bind(0x4002, SocketAddress(ip: own, port: relayed.port))?.isSuccess == true)
        r.sync()
        #expect(r.table.entries.isEmpty, "the relay's own address stays with user space (its checks, the short circuit)")
        // A client of a listener whose address the worker does not know (not UDP over IPv4).
        var mirror = TURNFastPath(capacity: 4, counterOffset: 0, listeners: [])
        var table = FakeChannelTable()
        #expect(r.bind(0x4003, r.peer)?.isSuccess == true)
        _ = mirror.sync(r.h.server, table: &table, now: r.h.now)
        #expect(table.entries.isEmpty)
    }

    @Test func aFullKernelTableLeavesChannelsInUserSpaceCounted() {
        let r = FastPathRig()
        r.table.capacity = 1
        _ = r.bound()
        #expect(r.mirror.refused == 1 && r.table.entries.count == 1)
        let key = ClientKey(address: r.h.client, transport: .udp(listener: 0))
        #expect(r.h.server.channelTarget(client: key, channel: 0x4001, length: 10, now: r.h.now) != nil, "user space still relays it")
    }
}
