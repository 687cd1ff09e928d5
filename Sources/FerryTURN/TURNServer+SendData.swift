import FerryCore
import FerryWire

extension TURNServer {
    // MARK: Send indication (RFC 8656 §10.2)

    func sendIndication(_ msg: STUNMessage, client: ClientKey, now: UInt64) -> Action {
        guard let slot = table.pointee.byClient[client] else {
            metrics.add(counters.drops[.noAllocation])
            return .none
        }
        // "The message is first checked for validity. The Send indication MUST contain both an
        // XOR-PEER-ADDRESS attribute and a DATA attribute. If one of these attributes is missing
        // or invalid, then the message is discarded."
        guard let peer = msg.xorAddress(STUN.Attribute.xorPeerAddress), let data = msg.attribute(STUN.Attribute.data) else {
            metrics.add(counters.drops[.malformed])
            return .none
        }
        let relay = table.pointee.allocations[Int(slot)].relay(for: IPFamily(peer.ip))
        guard !relay.isNone else {
            metrics.add(counters.drops[.malformed])
            return .none
        }
        // "...the server MUST check that there is a permission installed for the IP address
        // contained in the XOR-PEER-ADDRESS attribute. If no such permission exists, the message
        // is discarded."
        guard table.pointee.hasPermission(slot, peer.ip, now: now) else {
            metrics.add(counters.drops[.noPermission])
            return .none
        }
        // A permission for one of the relay's own addresses admits the ports of live
        // allocations only, at the moment of sending.
        if policy.refusesSend(to: peer, live: relayPorts) {
            metrics.add(counters.drops[.deniedPeer])
            return .none
        }
        guard consumeBandwidth(slot, bytes: data.count, now: now) else {
            metrics.add(counters.drops[.quota])
            return .none
        }
        metrics.add(counters.relayedPackets.toPeer)
        metrics.add(counters.relayedBytes.toPeer, UInt64(data.count))
        table.pointee.allocations[Int(slot)].packetsToPeer &+= 1
        table.pointee.allocations[Int(slot)].bytesToPeer &+= UInt64(data.count)
        return .relay(relay, peer: peer, payload: data)
    }

    // MARK: The relay path

    /// Where a client's ChannelData goes: the relay handle and peer, or nil (dropped and
    /// counted). Per packet: one hash lookup, a scan of the allocation's few channels, a token
    /// bucket; for a channel to one of the relay's own addresses, one load from the live ports.
    /// Counting of relayed packets is left to the caller, once per batch.
    @inlinable
    public func channelTarget(client: ClientKey, channel: UInt16, length: Int, now: UInt64) -> (relay: RelayID, peer: SocketAddress)? {
        let t = table
        guard let slot = t.pointee.byClient[client] else {
            drop(.noAllocation)
            return nil
        }
        guard let binding = t.pointee.binding(slot, channel: channel, now: now) else {
            drop(.noChannel)
            return nil
        }
        let peer = binding.pointee.peer
        if binding.pointee.liveOnly && !relayPorts.contains(peer) {
            drop(.deniedPeer)
            return nil
        }
        let a = t.pointee.allocations + Int(slot)
        let relay = a.pointee.relay(for: IPFamily(peer.ip))
        guard !relay.isNone else {
            drop(.malformed)
            return nil
        }
        guard consumeBandwidth(slot, bytes: length, now: now) else {
            drop(.quota)
            return nil
        }
        a.pointee.packetsToPeer &+= 1
        a.pointee.bytesToPeer &+= UInt64(length)
        return (relay, peer)
    }

    /// How a datagram from `peer` on allocation `slot`'s relay reaches the client.
    public enum PeerRoute {
        case drop
        /// As ChannelData on this channel.
        case channel(UInt16, client: SocketAddress, via: ClientTransport)
        /// As a Data indication.
        case indication(client: SocketAddress, via: ClientTransport)
    }

    /// RFC 8656 §10.3 and §12.5: a datagram from a peer is relayed only if the peer's IP has a
    /// permission; through its channel if one is bound, else in a Data indication.
    @inlinable
    public func peerRoute(slot: Int32, generation: UInt32, peer: SocketAddress, length: Int, now: UInt64) -> PeerRoute {
        let t = table
        let a = t.pointee.allocations + Int(slot)
        guard a.pointee.active, a.pointee.generation == generation else {
            drop(.noAllocation)
            return .drop
        }
        guard t.pointee.hasPermission(slot, peer.ip, now: now) else {
            drop(.noPermission)
            return .drop
        }
        guard consumeBandwidth(slot, bytes: length, now: now) else {
            drop(.quota)
            return .drop
        }
        a.pointee.packetsToClient &+= 1
        a.pointee.bytesToClient &+= UInt64(length)
        let channel = t.pointee.channel(slot, peer: peer, now: now)
        if channel != 0 { return .channel(channel, client: a.pointee.client, via: a.pointee.transport) }
        return .indication(client: a.pointee.client, via: a.pointee.transport)
    }

    // MARK: TURN to TURN inside ferryd

    /// Whether datagrams to `peer` may be short-circuited at all: on, and `peer` is one of this
    /// ferryd's own relayed addresses (a comparison with its few addresses).
    @inlinable
    public func mayShortCircuit(to peer: SocketAddress) -> Bool {
        settings.shortCircuit && policy.isOwnRelay(peer.ip)
    }

    /// Whether a datagram from this ferryd's relayed address `from` to the allocation in `slot`
    /// can be handed to that allocation's client directly: the allocation is live, its client is
    /// on UDP, and, when the datagram has no room for a Data indication's header in front
    /// (`needsChannel`: it came as ChannelData), a channel to `from` is bound. Otherwise it takes
    /// the kernel's path. What it is then checked against (the permission, the bandwidth) is
    /// `peerRoute`'s, as for any datagram from a peer.
    @inlinable
    public func takesShortCircuit(slot: Int32, generation: UInt32, from: SocketAddress, needsChannel: Bool, now: UInt64) -> Bool {
        let t = table
        let a = t.pointee.allocations + Int(slot)
        guard a.pointee.active, a.pointee.generation == generation, case .udp = a.pointee.transport else { return false }
        return !needsChannel || t.pointee.channel(slot, peer: from, now: now) != 0
    }

    /// Counts datagrams delivered between two allocations inside ferryd.
    public func countShortCircuited(_ n: UInt64) { metrics.add(counters.shortCircuited, n) }

    /// Counts a datagram for another worker's allocation sent through the kernel: the hand-off was full.
    public func countShortCircuitHandoffFull() { metrics.add(counters.shortCircuitHandoffFull) }

    @usableFromInline
    func drop(_ reason: TURNCounters.Drop) { metrics.add(counters.drops[reason]) }

    /// Counts a drop found by the caller (send errors, full buffers, malformed ChannelData).
    public func countDrop(_ reason: TURNCounters.Drop, _ n: UInt64 = 1) { metrics.add(counters.drops[reason], n) }

    /// Counts an Allocate that failed because no relayed socket could be opened.
    public func countRelayFailure(_ reason: TURNCounters.RelayFailure) { metrics.add(counters.allocationFailures[reason]) }

    /// Counts relayed traffic, once per batch.
    public func countRelayed(toPeer: Bool, packets: UInt64, bytes: UInt64) {
        metrics.add(toPeer ? counters.relayedPackets.toPeer : counters.relayedPackets.toClient, packets)
        metrics.add(toPeer ? counters.relayedBytes.toPeer : counters.relayedBytes.toClient, bytes)
    }

    /// The per-allocation bandwidth bucket (bytes per second, both directions).
    @usableFromInline
    func consumeBandwidth(_ slot: Int32, bytes: Int, now: UInt64) -> Bool {
        let rate = settings.bandwidthPerAllocation
        if rate == 0 { return true }
        let a = table.pointee.allocations + Int(slot)
        return a.pointee.bandwidth.take(Double(bytes), rate: Double(rate), capacity: Double(burstBytes), now: now)
    }
}
