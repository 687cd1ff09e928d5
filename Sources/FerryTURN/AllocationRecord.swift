import FerryCore

/// One allocation as an operator sees it: a copy made on the allocation's worker, listed by
/// `/v1/allocations` and written to the session log when the allocation ends.
public struct AllocationRecord: Sendable {
    /// Why an allocation ended (the session log's `reason`).
    public enum End: String, Sendable, CaseIterable {
        /// Its lifetime ran out without a Refresh.
        case expired
        /// The client sent a Refresh with lifetime 0.
        case clientDeleted = "client_deleted"
        /// Its TCP or TLS connection closed (RFC 8656 §3.1).
        case connectionClosed = "connection_closed"
        /// ferryd stopped (after the drain).
        case shutdown
        /// Ended through the admin API.
        case endedByOperator = "ended_by_operator"
    }

    public var username: String
    public var client: SocketAddress
    public var transport: ClientTransport
    public var relayed: [SocketAddress]
    /// Unix seconds.
    public var created: UInt64
    public var ageSeconds: UInt64
    public var expiresInSeconds: UInt64
    public var permissions: Int
    public var channels: Int
    public var packetsToPeer: UInt64
    public var bytesToPeer: UInt64
    public var packetsToClient: UInt64
    public var bytesToClient: UInt64

    /// The user: for a TURN REST username (`expiry:user`, as coturn, NetBird and Synapse make
    /// them) the part after the first colon when what comes before is a number, else the whole
    /// username.
    public var user: String { Self.user(of: username) }

    public static func user(of username: String) -> String {
        guard let colon = username.firstIndex(of: ":"), UInt64(username[..<colon]) != nil else { return username }
        return String(username[username.index(after: colon)...])
    }

    init(_ a: Allocation, now: UInt64) {
        username = a.username
        client = a.client
        transport = a.transport
        relayed = [a.relay4.isNone ? nil : a.relayAddress4, a.relay6.isNone ? nil : a.relayAddress6].compactMap { $0 }
        created = a.createdWall
        ageSeconds = (now > a.created ? now - a.created : 0) / 1_000_000_000
        expiresInSeconds = (a.expiry > now ? a.expiry - now : 0) / 1_000_000_000
        permissions = Int(a.permissionCount)
        channels = Int(a.channelCount)
        packetsToPeer = a.packetsToPeer
        bytesToPeer = a.bytesToPeer
        packetsToClient = a.packetsToClient
        bytesToClient = a.bytesToClient
    }
}

extension TURNServer {
    /// Every live allocation on this worker.
    public func allocationRecords(now: UInt64) -> [AllocationRecord] {
        let t = table.pointee
        return (0..<t.usedSlots).compactMap { i in t.allocations[i].active ? AllocationRecord(t.allocations[i], now: now) : nil }
    }

    /// Ends every allocation `matching` selects (the admin API): relays closed, the session log
    /// written with `ended_by_operator`. Returns how many ended.
    public func endAllocations(now: UInt64, matching: (AllocationRecord) -> Bool) -> Int {
        let t = table
        var ended = 0
        for i in 0..<t.pointee.usedSlots where t.pointee.allocations[i].active {
            guard matching(AllocationRecord(t.pointee.allocations[i], now: now)) else { continue }
            delete(Int32(i), .endedByOperator, now: now)
            metrics.add(counters.allocationsDeleted)
            ended += 1
        }
        return ended
    }
}
