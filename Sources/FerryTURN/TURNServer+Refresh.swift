import FerryCore
import FerryWire

extension TURNServer {
    // MARK: Refresh (RFC 8656 §7.5)

    func refresh(_ ctx: Context) -> Action {
        let slot: Int32
        switch ownAllocation(ctx) {
        case .answered(let a): return a
        case .slot(let s): slot = s
        }
        let a = table.pointee.allocations[Int(slot)]
        let lifetime = grantedLifetime(ctx.msg, allowZero: true)
        markFastPath(slot)
        // REQUESTED-ADDRESS-FAMILY in a Refresh names one family of a dual allocation
        // (RFC 8656 §7.5): 443 if the allocation has no relay of that family.
        if let f = ctx.msg.attribute(STUN.Attribute.requestedAddressFamily) {
            guard f.count == 4, let family = IPFamily(rawValue: f[0]) else { return error(ctx, 440) }
            guard !a.relay(for: family).isNone else { return error(ctx, 443) }
            if lifetime == 0 && !a.relay4.isNone && !a.relay6.isNone {
                relays.closeRelay(a.relay(for: family))
                if family == .ipv4 { table.pointee.allocations[Int(slot)].relay4 = .none } else { table.pointee.allocations[Int(slot)].relay6 = .none }
                return success(ctx) { w in w.append(STUN.Attribute.lifetime, uint32: UInt32((a.expiry - min(a.expiry, ctx.now)) / 1_000_000_000)) }
            }
        }
        if lifetime == 0 {
            delete(slot, .clientDeleted, now: ctx.now)
            metrics.add(counters.allocationsDeleted)
        } else {
            table.pointee.allocations[Int(slot)].expiry = ctx.now + UInt64(lifetime) * 1_000_000_000
        }
        return success(ctx) { w in w.append(STUN.Attribute.lifetime, uint32: lifetime) }
    }

    func delete(_ slot: Int32, _ reason: AllocationRecord.End, now: UInt64) {
        if mirrorsFastPath {
            willEnd?(slot)
            fastPathDirty.append(slot)
        }
        if let onEnd { onEnd(AllocationRecord(table.pointee.allocations[Int(slot)], now: now), reason) }
        let user = table.pointee.allocations[Int(slot)].username
        closeRelays(slot)
        table.pointee.remove(slot)
        shared.releaseUserSlot(user)
        metrics.set(counters.allocationsActive, UInt64(table.pointee.activeCount))
    }
}
