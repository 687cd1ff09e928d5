import FerryCore
import FerryWire
import Synchronization

/// What a worker's TURN server is allowed to do; built from the config by the server.
public struct TURNSettings: Sendable {
    public var realm = "ferry"
    public var software: String? = "ferry"
    /// Addresses relayed sockets bind to, per family; nil disables that family.
    public var relayIPv4: IPAddress? = IPAddress("127.0.0.1")
    public var relayIPv6: IPAddress?
    /// Addresses advertised in XOR-RELAYED-ADDRESS when the host is behind 1:1 NAT.
    public var externalIPv4: IPAddress?
    public var externalIPv6: IPAddress?
    /// Seconds (RFC 8656 §7.2: default 600 s, and a configurable maximum).
    public var defaultLifetime: UInt32 = 600
    public var maxLifetime: UInt32 = 3600
    /// RFC 8656 §9 and §12: fixed by the protocol.
    public static let permissionLifetime: UInt64 = 300
    public static let channelLifetime: UInt64 = 600
    public static let channelReuseDelay: UInt64 = 300
    /// This worker's share of `turn.max_allocations`.
    public var maxAllocations = 1000
    public var maxAllocationsPerUser = 10
    public var maxPermissionsPerAllocation = 16
    public var maxChannelsPerAllocation = 16
    /// Bytes per second per allocation, both directions together; 0 = unlimited.
    public var bandwidthPerAllocation: UInt64 = 0
    public var bandwidthBurst: UInt64 = 0
    /// 401 answers per second per source IP (a bucket of `unauthorizedBurst`); 0 = unlimited.
    public var unauthorizedPerSecond: Double = 5
    public var unauthorizedBurst: Double = 20
    /// Only RFC 8656's channel numbers (0x4000–0x4FFF); otherwise RFC 5766's up to 0x7FFF too.
    public var strictChannelNumbers = false
    /// TURN to TURN inside ferryd: a datagram from one allocation to another's relayed address on
    /// the same worker is delivered directly, checked as if it had crossed the network.
    public var shortCircuit = true

    public init() {}
}

/// Method numbers re-exported so FerryTURN's users need not import FerryWire for them.
public typealias STUNMethods = STUN.Method
