import Testing
import FerryCore
import FerryWire
import FerryTURN

/// The relay's own addresses as peers (issue: a TURN client could reach any UDP socket on them
/// within the relay port range): only ports held by a live allocation of this ferryd, on any
/// worker, at the moment of each ChannelBind, Send and ChannelData.
@Suite struct OwnRelayPeers {
    static let relayIP = IPAddress("10.20.0.5")!

    /// Two workers of one ferryd: one TURNShared, relay ports from separate blocks.
    static func workers() -> (Harness, Harness) {
        let shared = TURNShared()
        let policy = PeerPolicy(ownRelayAddresses: [relayIP])
        let a = Harness(settings: { $0.relayIPv4 = relayIP }, policy: policy, shared: shared)
        let b = Harness(settings: { $0.relayIPv4 = relayIP }, policy: policy, shared: shared)
        b.relays.nextPort = 60000
        return (a, b)
    }

    static func bind(_ h: Harness, _ n: UInt16, _ p: SocketAddress) -> Harness.Reply? {
        h.request(STUN.Method.channelBind) { w in
            w.append(STUN.Attribute.channelNumber, uint32: UInt32(n) << 16)
            w.append(STUN.Attribute.xorPeerAddress, xorAddress: p)
        }
    }

    static func sendIndication(_ h: Harness, to p: SocketAddress) -> TURNServer.Action {
        h.send(STUNWriter.build(method: STUN.Method.send, class: .indication) { w in
            w.append(STUN.Attribute.xorPeerAddress, xorAddress: p)
            [1, 2, 3].withUnsafeBytes { w.append(STUN.Attribute.data, bytes: $0) }
        }).action
    }

    static func isRelayed(_ action: TURNServer.Action) -> Bool {
        if case .relay = action { return true }
        return false
    }

    @Test func allocationsOnTwoWorkersReachEachOtherAndNothingElse() {
        let (a, b) = OwnRelayPeers.workers()
        let ra = a.allocate()!.address(STUN.Attribute.xorRelayedAddress)!
        let rb = b.allocate()!.address(STUN.Attribute.xorRelayedAddress)!
        #expect(ra.ip == OwnRelayPeers.relayIP && rb.ip == OwnRelayPeers.relayIP && ra.port != rb.port)
        #expect(a.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: rb) }?.isSuccess == true)
        #expect(OwnRelayPeers.bind(a, 0x4000, rb)?.isSuccess == true)
        #expect(OwnRelayPeers.isRelayed(OwnRelayPeers.sendIndication(a, to: rb)))
        let key = ClientKey(address: a.client, transport: .udp(listener: 0))
        #expect(a.server.channelTarget(client: key, channel: 0x4000, length: 10, now: a.now)?.peer == rb)

        // A port in the relay range that no allocation holds (another process's socket).
        let stranger = SocketAddress(ip: OwnRelayPeers.relayIP, port: rb.port + 1)
        #expect(OwnRelayPeers.bind(a, 0x4001, stranger)?.code == 403)
        #expect(!OwnRelayPeers.isRelayed(OwnRelayPeers.sendIndication(a, to: stranger)))
        #expect(a.drops(.deniedPeer) == 2)
    }

    @Test func aFreedPortStopsBeingReachableAtOnce() {
        let (a, b) = OwnRelayPeers.workers()
        _ = a.allocate()
        let rb = b.allocate()!.address(STUN.Attribute.xorRelayedAddress)!
        #expect(OwnRelayPeers.bind(a, 0x4000, rb)?.isSuccess == true)
        let key = ClientKey(address: a.client, transport: .udp(listener: 0))
        #expect(a.server.channelTarget(client: key, channel: 0x4000, length: 10, now: a.now) != nil)
        // b deletes its allocation: a's channel and permission still exist, the port does not.
        #expect(b.request(STUN.Method.refresh) { $0.append(STUN.Attribute.lifetime, uint32: 0) }?.isSuccess == true)
        #expect(a.server.channelTarget(client: key, channel: 0x4000, length: 10, now: a.now) == nil)
        #expect(!OwnRelayPeers.isRelayed(OwnRelayPeers.sendIndication(a, to: rb)))
        #expect(a.drops(.deniedPeer) == 2)
        #expect(OwnRelayPeers.bind(a, 0x4000, rb)?.code == 403, "a refresh of the binding is refused too")
    }

    @Test func anExpiredAllocationsPortIsRefused() {
        let (a, b) = OwnRelayPeers.workers()
        _ = a.allocate()
        let rb = b.allocate()!.address(STUN.Attribute.xorRelayedAddress)!
        #expect(OwnRelayPeers.bind(a, 0x4000, rb)?.isSuccess == true)
        // b's allocation (600 s) expires in b's sweep; a keeps its own alive.
        b.advance(seconds: 601)
        b.server.sweep(now: b.now)
        let key = ClientKey(address: a.client, transport: .udp(listener: 0))
        #expect(a.server.channelTarget(client: key, channel: 0x4000, length: 10, now: a.now) == nil)
        #expect(a.drops(.deniedPeer) == 1)
    }

    @Test func aReloadThatAllowsOrLimitsTheAddressAppliesToBoundChannels() {
        let (a, b) = OwnRelayPeers.workers()
        _ = a.allocate()
        let rb = b.allocate()!.address(STUN.Attribute.xorRelayedAddress)!
        #expect(OwnRelayPeers.bind(a, 0x4000, rb)?.isSuccess == true)
        let key = ClientKey(address: a.client, transport: .udp(listener: 0))
        // The operator opens the address explicitly: the freed port stays reachable.
        a.server.update(credentials: a.server.credentials,
                        policy: PeerPolicy(allow: [CIDR("10.20.0.5/32")!], ownRelayAddresses: [OwnRelayPeers.relayIP]))
        _ = b.request(STUN.Method.refresh) { $0.append(STUN.Attribute.lifetime, uint32: 0) }
        #expect(a.server.channelTarget(client: key, channel: 0x4000, length: 10, now: a.now) != nil)
        // And closes it again: refused on the next packet.
        a.server.update(credentials: a.server.credentials, policy: PeerPolicy(ownRelayAddresses: [OwnRelayPeers.relayIP]))
        #expect(a.server.channelTarget(client: key, channel: 0x4000, length: 10, now: a.now) == nil)
    }

    @Test func theChannelFlagFitsInPaddingSoAllocationsCostNoMore() {
        // 16 channel slots per allocation by default: a byte more per slot would be 128 B more
        // per allocation (measured by Benchmarks/turn-relay before the flag was moved).
        #expect(MemoryLayout<ChannelBinding>.stride == 48)
    }
}
