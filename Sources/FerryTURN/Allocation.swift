import FerryCore
import FerryWire

/// How a TURN allocation's state is laid out on one worker: three flat slabs allocated once
/// (allocations, and per allocation a fixed number of permission and channel slots), so the
/// relay path reaches everything through a pointer and an index: no allocation, no hashing but
/// the client lookup, no retain/release, no exclusivity checks.
public struct Allocation {
    public var active = false
    /// Bumped on every reuse of the slot, so stale relay-socket events are recognised.
    public var generation: UInt32 = 0
    public var client = SocketAddress(ip: .ipv4Any, port: 0)
    public var transport = ClientTransport.udp(listener: 0)
    /// Relayed sockets (ids from the `RelayProvider`), `.none` when absent.
    public var relay4 = RelayID.none
    public var relay6 = RelayID.none
    /// The relayed transport addresses as advertised to the client.
    public var relayAddress4 = SocketAddress(ip: .ipv4Any, port: 0)
    public var relayAddress6 = SocketAddress(ip: .ipv6Any, port: 0)
    /// Monotonic nanoseconds.
    public var expiry: UInt64 = 0
    public var username = ""
    public var key: [UInt8] = []
    public var allocateTransaction = TransactionID(high: 0, low: 0)
    public var permissionCount: Int32 = 0
    public var channelCount: Int32 = 0
    /// Bandwidth (bytes), both directions together.
    public var bandwidth = TokenBucket(capacity: 0, now: 0)
    /// When it was created: monotonic nanoseconds, and Unix seconds for the session log.
    public var created: UInt64 = 0
    public var createdWall: UInt64 = 0
    /// Traffic accepted for relaying, each way (plain adds on the slot the relay path already
    /// reads; for the session log and `/v1/allocations`).
    public var packetsToPeer: UInt64 = 0
    public var bytesToPeer: UInt64 = 0
    public var packetsToClient: UInt64 = 0
    public var bytesToClient: UInt64 = 0

    public func relay(for family: IPFamily) -> RelayID { family == .ipv4 ? relay4 : relay6 }
    public var clientKey: ClientKey { ClientKey(address: client, transport: transport) }
}

public enum IPFamily: UInt8, Sendable {
    case ipv4 = 1
    case ipv6 = 2

    public init(_ ip: IPAddress) { self = ip.isIPv4 ? .ipv4 : .ipv6 }
}

/// A permission (RFC 8656 §9): peer IP, no port, for 300 s.
public struct Permission {
    public var ip = IPAddress.ipv4Any
    public var expiry: UInt64 = 0
}

/// A channel binding (RFC 8656 §12): number ↔ peer transport address for 600 s, then 300 s
/// more during which neither may be rebound to something else.
public struct ChannelBinding {
    public var number: UInt16 = 0
    /// The peer is one of the relay's own addresses, reachable only while a live allocation
    /// holds its port (`PeerPolicy.limitsToLivePorts`): decided at bind and on reload, so the
    /// relay path looks at the live ports only for such a channel. Declared next to `number`,
    /// in the padding before `peer`: the slot stays 48 bytes (16 per allocation by default).
    public var liveOnly = false
    public var peer = SocketAddress(ip: .ipv4Any, port: 0)
    public var expiry: UInt64 = 0
    public var reservedUntil: UInt64 = 0
}

/// How a client reaches this worker: a datagram on one of its UDP listener sockets (by index),
/// or one of its stream connections (TCP or TLS). Part of the five-tuple, spelled out rather
/// than packed into another field's spare bits.
public enum ClientTransport: Hashable, Sendable {
    case udp(listener: Int32)
    case stream(ConnectionID)
}

/// Identifies a client's flow on a worker (RFC 8656 §2's five-tuple, as pion/turn keys it): the
/// client's address and the transport it came in on; the server side is implied by the listener
/// or connection.
public struct ClientKey: Hashable, Sendable {
    public var address: SocketAddress
    public var transport: ClientTransport

    public init(address: SocketAddress, transport: ClientTransport) {
        self.address = address
        self.transport = transport
    }
}

/// The slabs and the client index. Reached through one pointer by the relay path.
public struct AllocationTable {
    public let capacity: Int
    public let permissionsPer: Int
    public let channelsPer: Int
    public let allocations: UnsafeMutablePointer<Allocation>
    public let permissions: UnsafeMutablePointer<Permission>
    public let channels: UnsafeMutablePointer<ChannelBinding>
    public var byClient: [ClientKey: Int32] = [:]
    var free: [Int32] = []
    /// Slots below this have been initialized. The slabs are reserved for `capacity` at start
    /// but touched (made resident) only as allocations first use them.
    private var highWater = 0
    public private(set) var activeCount = 0

    public init(capacity: Int, permissionsPer: Int, channelsPer: Int) {
        self.capacity = capacity
        self.permissionsPer = permissionsPer
        self.channelsPer = channelsPer
        allocations = .allocate(capacity: capacity)
        permissions = .allocate(capacity: capacity * permissionsPer)
        channels = .allocate(capacity: capacity * channelsPer)
    }

    public func release() {
        allocations.deinitialize(count: highWater)
        allocations.deallocate()
        permissions.deallocate()
        channels.deallocate()
    }

    mutating func take(_ key: ClientKey) -> Int32? {
        let slot: Int32
        if let reused = free.popLast() {
            slot = reused
        } else if highWater < capacity {
            slot = Int32(highWater)
            (allocations + highWater).initialize(to: Allocation())
            (permissions + highWater * permissionsPer).initialize(repeating: Permission(), count: permissionsPer)
            (channels + highWater * channelsPer).initialize(repeating: ChannelBinding(), count: channelsPer)
            highWater += 1
        } else {
            return nil
        }
        let g = allocations[Int(slot)].generation &+ 1
        allocations[Int(slot)] = Allocation()
        allocations[Int(slot)].generation = g
        allocations[Int(slot)].active = true
        allocations[Int(slot)].client = key.address
        allocations[Int(slot)].transport = key.transport
        byClient[key] = slot
        activeCount += 1
        return slot
    }

    mutating func remove(_ slot: Int32) {
        let a = allocations[Int(slot)]
        guard a.active else { return }
        byClient[a.clientKey] = nil
        allocations[Int(slot)].active = false
        allocations[Int(slot)].key = []
        allocations[Int(slot)].username = ""
        allocations[Int(slot)].generation &+= 1
        free.append(slot)
        activeCount -= 1
    }

    /// Slots that have ever held an allocation (the sweep looks at no others).
    public var usedSlots: Int { highWater }

    @inlinable public func permissionBase(_ slot: Int32) -> UnsafeMutablePointer<Permission> {
        permissions + Int(slot) * permissionsPer
    }

    @inlinable public func channelBase(_ slot: Int32) -> UnsafeMutablePointer<ChannelBinding> {
        channels + Int(slot) * channelsPer
    }

    /// True when `ip` has a live permission on allocation `slot`.
    @inlinable
    public func hasPermission(_ slot: Int32, _ ip: IPAddress, now: UInt64) -> Bool {
        let p = permissionBase(slot)
        let n = Int(allocations[Int(slot)].permissionCount)
        for i in 0..<n where p[i].ip == ip && p[i].expiry > now { return true }
        return false
    }

    /// The live channel bound to `peer`, or 0.
    @inlinable
    public func channel(_ slot: Int32, peer: SocketAddress, now: UInt64) -> UInt16 {
        let c = channelBase(slot)
        let n = Int(allocations[Int(slot)].channelCount)
        for i in 0..<n where c[i].peer == peer && c[i].expiry > now { return c[i].number }
        return 0
    }

    /// Live channel `number`, or nil.
    @inlinable
    public func binding(_ slot: Int32, channel number: UInt16, now: UInt64) -> UnsafeMutablePointer<ChannelBinding>? {
        let c = channelBase(slot)
        let n = Int(allocations[Int(slot)].channelCount)
        for i in 0..<n where c[i].number == number && c[i].expiry > now { return c + i }
        return nil
    }
}
