import FerryCore
import FerryWire

extension TURNServer {
    // MARK: CreatePermission (RFC 8656 §9.2)

    func createPermission(_ ctx: Context) -> Action {
        let slot: Int32
        switch ownAllocation(ctx) {
        case .answered(let a): return a
        case .slot(let s): slot = s
        }
        // "When the server receives the CreatePermission request, it processes as per Section 5
        // plus the specific rules mentioned here. The message is checked for validity. The
        // CreatePermission request MUST contain at least one XOR-PEER-ADDRESS attribute..."
        guard let peers = ctx.msg.allXORAddresses(STUN.Attribute.xorPeerAddress), !peers.isEmpty else {
            metrics.add(counters.drops[.malformed])
            return error(ctx, 400, reason: "Missing or malformed XOR-PEER-ADDRESS")
        }
        let a = table.pointee.allocations[Int(slot)]
        for peer in peers {
            // "If an XOR-PEER-ADDRESS attribute contains an address of an address family that is
            // not the same as that of a relayed transport address for the allocation, the server
            // MUST generate an error response with the 443 (Peer Address Family Mismatch)."
            if a.relay(for: IPFamily(peer.ip)).isNone { return error(ctx, 443) }
            // "If the server is ... configured to forbid ... the address, 403 (Forbidden)."
            // The relay's own addresses pass here; their ports are checked on ChannelBind and Send.
            if !policy.permitsPermission(peer.ip) {
                metrics.add(counters.drops[.deniedPeer])
                return error(ctx, 403)
            }
        }
        // "The server MAY impose restrictions on the IP address ... values allowed ... If the
        // server cannot install the permissions, 508 (Insufficient Capacity)." All or nothing.
        let expiry = ctx.now + TURNSettings.permissionLifetime * 1_000_000_000
        guard installPermissions(slot, peers.map(\.ip), expiry: expiry, now: ctx.now) else {
            metrics.add(counters.drops[.quota])
            return error(ctx, 508)
        }
        return success(ctx) { _ in }
    }

    /// Installs or refreshes permissions for `ips`, reusing expired slots; false (and no change)
    /// when they do not fit.
    func installPermissions(_ slot: Int32, _ ips: [IPAddress], expiry: UInt64, now: UInt64) -> Bool {
        let base = table.pointee.permissionBase(slot)
        var count = Int(table.pointee.allocations[Int(slot)].permissionCount)
        let limit = table.pointee.permissionsPer
        var needed = 0
        var seen: [IPAddress] = []
        for ip in ips where !seen.contains(ip) {
            seen.append(ip)
            if !(0..<count).contains(where: { base[$0].ip == ip }) { needed += 1 }
        }
        let reusable = (0..<count).filter { base[$0].expiry <= now && !seen.contains(base[$0].ip) }.count
        guard count - reusable + needed <= limit else { return false }
        for ip in seen {
            if let i = (0..<count).first(where: { base[$0].ip == ip }) {
                base[i].expiry = expiry
                continue
            }
            if let i = (0..<count).first(where: { base[$0].expiry <= now && !seen.contains(base[$0].ip) }) {
                base[i] = Permission(ip: ip, expiry: expiry)
            } else {
                base[count] = Permission(ip: ip, expiry: expiry)
                count += 1
            }
            metrics.add(counters.permissionsCreated)
        }
        table.pointee.allocations[Int(slot)].permissionCount = Int32(count)
        markFastPath(slot)
        return true
    }
}
