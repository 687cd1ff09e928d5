import FerryCore
import FerryWire

extension TURNServer {
    // MARK: ChannelBind (RFC 8656 §11.2)

    func channelBind(_ ctx: Context) -> Action {
        let slot: Int32
        switch ownAllocation(ctx) {
        case .answered(let a): return a
        case .slot(let s): slot = s
        }
        // "The request contains both a CHANNEL-NUMBER and an XOR-PEER-ADDRESS attribute; the
        // channel number is in the range 0x4000 through 0x4FFF (inclusive)" — else 400. RFC 5766
        // §11 allowed "0x4000 through 0x7FFF" and coturn's clients still use all of it: accepted
        // unless strict.
        guard let cn = ctx.msg.attribute(STUN.Attribute.channelNumber), cn.count == 4 else {
            return error(ctx, 400, reason: "Missing CHANNEL-NUMBER")
        }
        let number = cn.u16(0)
        let highest = settings.strictChannelNumbers ? ChannelData.maxChannel : ChannelData.maxLegacyChannel
        guard number >= ChannelData.minChannel && number <= highest else { return error(ctx, 400, reason: "Channel number out of range") }
        guard let peer = ctx.msg.xorAddress(STUN.Attribute.xorPeerAddress) else {
            metrics.add(counters.drops[.malformed])
            return error(ctx, 400, reason: "Missing or malformed XOR-PEER-ADDRESS")
        }
        let a = table.pointee.allocations[Int(slot)]
        if a.relay(for: IPFamily(peer.ip)).isNone { return error(ctx, 443) }
        if !policy.permits(peer: peer, live: relayPorts) {
            metrics.add(counters.drops[.deniedPeer])
            return error(ctx, 403)
        }
        let base = table.pointee.channelBase(slot)
        var count = Int(a.channelCount)
        let now = ctx.now
        // "The channel number is not currently bound to a different transport address (same
        // transport address is OK); the transport address is not currently bound to a different
        // channel number." A binding counts until its reuse delay has passed too.
        var existing: Int?
        for i in 0..<count where base[i].reservedUntil > now {
            if base[i].number == number && base[i].peer != peer {
                return error(ctx, 400, reason: "Channel bound to another peer")
            }
            if base[i].peer == peer && base[i].number != number {
                return error(ctx, 400, reason: "Peer bound to another channel")
            }
            if base[i].number == number { existing = i }
        }
        let expiry = now + TURNSettings.channelLifetime * 1_000_000_000
        let reserved = expiry + TURNSettings.channelReuseDelay * 1_000_000_000
        let isNew = existing == nil
        if existing == nil {
            // A free slot: never used, or past its reuse delay.
            if let i = (0..<count).first(where: { base[$0].reservedUntil <= now }) {
                existing = i
            } else if count < table.pointee.channelsPer {
                existing = count
                count += 1
            } else {
                metrics.add(counters.drops[.quota])
                return error(ctx, 508)
            }
        }
        // "In addition, the server MUST install or refresh a permission for the IP address."
        guard installPermissions(slot, [peer.ip], expiry: now + TURNSettings.permissionLifetime * 1_000_000_000, now: now) else {
            metrics.add(counters.drops[.quota])
            return error(ctx, 508)
        }
        base[existing!] = ChannelBinding(number: number, liveOnly: policy.limitsToLivePorts(peer.ip), peer: peer,
                                        expiry: expiry, reservedUntil: reserved)
        table.pointee.allocations[Int(slot)].channelCount = Int32(count)
        // Counted once the binding exists (a 508 from the permission above made none).
        if isNew { metrics.add(counters.channelsBound) }
        markFastPath(slot)
        return success(ctx) { _ in }
    }
}
