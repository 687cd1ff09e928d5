import FerryCore

/// The native relay's sessions on one worker (docs/relay-protocol.md): who is bound where, which
/// WireGuard receiver indices lead to whom, and the limits. Pure: the service hands in the time
/// (whole seconds of its monotonic clock) and gets decisions back; nothing here does I/O.
///
/// A session is one pair of WireGuard keys in one network. Each of its two ends is bound by its
/// own key's holder (from the address the relay then forwards to), naming the other as partner;
/// packets flow once both ends are bound. Tables, all keyed by plain values (no allocation per
/// lookup):
/// - `byPair` a hash of (network, lower key, higher key) → slot, checked against the slot's keys
///   (8-byte keys rather than 68: the tables are most of a session's memory);
/// - `byAddress` source address → the first end bound there, the rest chained through the slots
///   (one WireGuard port talks to many partners);
/// - `byIndex` (receiver index, source address) → the end a packet goes to. WireGuard's
///   receiver indices are chosen by the receiving peer, so the relay learns them from the
///   handshake it forwards; keying by source as well keeps one session's indices from ever
///   steering another's packets.
///
/// Ownership: one worker's loop thread; the struct is moved into a local for each batch.
public struct RelaySessions {
    public struct Limits: Sendable {
        public var maxSessions = 100_000
        public var sessionsPerPeer = 64
        public var sessionsPerNetwork = 10_000
        /// An end not heard from (bind or packet) for this long is unbound.
        public var idleTimeout: UInt32 = 180
        /// Bytes per second per session, both directions together (0: no limit), and its burst.
        public var bandwidth: Double = 0
        public var burst: Double = 0
        public init() {}
    }

    /// WireGuard never uses a keypair past REJECT_AFTER_TIME (180 s) and retries a handshake for
    /// 90 s: an index learned longer ago than this is dead.
    public static let indexLifetime: UInt32 = 300
    /// Indices kept per direction: WireGuard's previous, current and next keypairs, and one more
    /// for an initiation retransmitted (with a fresh index) while the current one is in use.
    public static let ringSize = 4
    static let none = UInt32.max

    struct IndexRing {
        var values: (UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0)
        var count: UInt8 = 0
        var next: UInt8 = 0
        subscript(i: Int) -> UInt32 {
            get { withUnsafeBytes(of: values) { $0.load(fromByteOffset: i * 4, as: UInt32.self) } }
            set { withUnsafeMutableBytes(of: &values) { $0.storeBytes(of: newValue, toByteOffset: i * 4, as: UInt32.self) } }
        }
        func contains(_ v: UInt32) -> Bool { (0..<Int(count)).contains { self[$0] == v } }
    }

    struct End {
        var key: WireGuardKey
        var address = SocketAddress(ip: .ipv4Any, port: 0)
        var bound = false
        /// The next end bound at the same address (`sideRef`), or `none`.
        var next = RelaySessions.none
        var lastSeen: UInt32 = 0
        /// Receiver indices that packets *from* this end carry (they lead to the other end).
        var carried = IndexRing()
        var learned: UInt32 = 0
    }

    struct Session {
        var network: UInt32
        var live = true
        var ends: (End, End)
        var packets: UInt64 = 0
        var bytes: UInt64 = 0
        var bucket: TokenBucket
        subscript(e: Int) -> End {
            get { e == 0 ? ends.0 : ends.1 }
            set { if e == 0 { ends.0 = newValue } else { ends.1 = newValue } }
        }
        var active: Bool { ends.0.bound && ends.1.bound }
    }

    struct PairKey: Hashable { var network: UInt32; var low: WireGuardKey; var high: WireGuardKey }
    struct PeerKey: Hashable { var network: UInt32; var key: WireGuardKey }

    /// Swift's per-process seeded hash, so nobody outside picks keys that collide; a collision
    /// of two live pairs refuses the second (`.sessions`), a count only shares a limit.
    static func digest<T: Hashable>(_ v: T) -> Int { v.hashValue }
    struct IndexKey: Hashable { var index: UInt32; var source: SocketAddress }

    public let limits: Limits
    var slots: [Session] = []
    var free: [UInt32] = []
    var byPair: [Int: UInt32] = [:]
    var byAddress: [SocketAddress: UInt32] = [:]
    var byIndex: [IndexKey: UInt32] = [:]
    var perPeer: [Int: UInt16] = [:]
    var networkIDs: [String: UInt32] = [:]
    var networkSessions: [UInt32: Int] = [:]
    public private(set) var sessionCount = 0
    public private(set) var activeCount = 0
    /// With a kernel fast path (`RelayFastPath`): slots whose indices or addresses changed since
    /// it last synced. Marked on binds, handshakes, unbinds and expiry, never per data packet.
    public var mirrorsFastPath = false
    public var fastPathDirty: [UInt32] = []

    public init(limits: Limits) {
        self.limits = limits
        // Address space, not memory: pages are touched as slots are used, and the table never
        // copies itself while growing.
        slots.reserveCapacity(min(limits.maxSessions, 1 << 20))
    }

    static func ref(_ slot: UInt32, _ end: Int) -> UInt32 { slot << 1 | UInt32(end) }

    @inline(__always) mutating func markFastPath(_ slot: UInt32) {
        if mirrorsFastPath { fastPathDirty.append(slot) }
    }

    // MARK: Binding

    public enum BindResult: Equatable, Sendable {
        case waiting, active
        case refused(Refusal)
    }

    /// `samePeer`: a key bound to itself, or both ends of a session at one address.
    public enum Refusal: Equatable, Sendable { case samePeer, sessions, perPeer, perNetwork }

    /// Binds `key`'s end of its session with `partner` in `network` at `address` (a first bind,
    /// a refresh, or a rebind from a new address after a NAT rebinding).
    public mutating func bind(network: String, key: WireGuardKey, partner: WireGuardKey, address: SocketAddress, now: UInt32) -> BindResult {
        guard key != partner else { return .refused(.samePeer) }
        let net = networkID(network)
        let pair = PairKey(network: net, low: min(key, partner), high: max(key, partner))
        let end = key == pair.low ? 0 : 1
        let slot: UInt32
        if let s = byPair[RelaySessions.digest(pair)] {
            guard slots[Int(s)].network == net && slots[Int(s)].ends.0.key == pair.low && slots[Int(s)].ends.1.key == pair.high else {
                return .refused(.sessions)
            }
            slot = s
            // Both ends at one address would reflect its packets back to it (a stream or a
            // port holding both keys): refused, as binding a key to itself is.
            let other = slots[Int(s)][1 - (key == pair.low ? 0 : 1)]
            guard !(other.bound && other.address == address) else { return .refused(.samePeer) }
        } else {
            guard sessionCount < limits.maxSessions else { return .refused(.sessions) }
            guard networkSessions[net, default: 0] < limits.sessionsPerNetwork else { return .refused(.perNetwork) }
            guard perPeer[RelaySessions.digest(PeerKey(network: net, key: key)), default: 0] < limits.sessionsPerPeer else { return .refused(.perPeer) }
            slot = allocate(Session(network: net, ends: (End(key: pair.low), End(key: pair.high)),
                                    bucket: TokenBucket(capacity: limits.burst, now: UInt64(now) * 1_000_000_000)))
            byPair[RelaySessions.digest(pair)] = slot
            networkSessions[net, default: 0] += 1
            sessionCount += 1
        }
        var e = slots[Int(slot)][end]
        if !e.bound {
            let peer = RelaySessions.digest(PeerKey(network: net, key: key))
            guard perPeer[peer, default: 0] < limits.sessionsPerPeer else {
                if !slots[Int(slot)][1 - end].bound { release(slot) }
                return .refused(.perPeer)
            }
            perPeer[peer, default: 0] += 1
            e.address = address
            e.bound = true
            e.lastSeen = now
            slots[Int(slot)][end] = e
            link(slot, end)
            if slots[Int(slot)].active { activeCount += 1 }
        } else {
            if e.address != address { rebind(slot, end, to: address) }
            slots[Int(slot)][end].lastSeen = now
        }
        return slots[Int(slot)].active ? .active : .waiting
    }

    /// Unbinds `key`'s end of its session with `partner`; the session ends when neither end is
    /// bound. False when there was nothing bound.
    @discardableResult
    public mutating func unbind(network: String, key: WireGuardKey, partner: WireGuardKey) -> Bool {
        guard let net = networkIDs[network] else { return false }
        let pair = PairKey(network: net, low: min(key, partner), high: max(key, partner))
        guard let slot = byPair[RelaySessions.digest(pair)], slots[Int(slot)].ends.0.key == pair.low,
              slots[Int(slot)].ends.1.key == pair.high, slots[Int(slot)].network == net else { return false }
        let end = key == pair.low ? 0 : 1
        guard slots[Int(slot)][end].bound else { return false }
        unbindEnd(slot, end)
        return true
    }

    /// Unbinds every end bound at `address` (a stream end whose connection closed); returns how many.
    @discardableResult
    public mutating func unbindAll(at address: SocketAddress) -> Int {
        var n = 0
        while let r = byAddress[address] {
            unbindEnd(r >> 1, Int(r & 1))
            n += 1
        }
        return n
    }

    /// Once a second: ends idle past `idleTimeout` are unbound, indices past `indexLifetime`
    /// forgotten, and sessions with no end left released. Returns how many ends timed out.
    @discardableResult
    public mutating func sweep(now: UInt32) -> Int {
        var expired = 0
        for i in slots.indices where slots[i].live {
            let slot = UInt32(i)
            for end in 0...1 {
                let e = slots[i][end]
                if e.carried.count > 0 && now &- e.learned > RelaySessions.indexLifetime { forgetIndices(slot, end) }
                if e.bound && now &- e.lastSeen > limits.idleTimeout {
                    unbindEnd(slot, end)
                    expired += 1
                }
                if !slots[i].live { break }
            }
        }
        return expired
    }

    /// The number of learned receiver indices (for tests and the status page).
    public var indexCount: Int { byIndex.count }

    /// Every address an end is bound at (tests and fuzzing).
    public var boundAddresses: [SocketAddress] { Array(byAddress.keys) }

    // MARK: Internals

    mutating func networkID(_ name: String) -> UInt32 {
        if let id = networkIDs[name] { return id }
        let id = UInt32(networkIDs.count)
        networkIDs[name] = id
        return id
    }

    private mutating func allocate(_ s: Session) -> UInt32 {
        if let slot = free.popLast() {
            slots[Int(slot)] = s
            return slot
        }
        slots.append(s)
        return UInt32(slots.count - 1)
    }

    private mutating func release(_ slot: UInt32) {
        let s = slots[Int(slot)]
        byPair[RelaySessions.digest(PairKey(network: s.network, low: s.ends.0.key, high: s.ends.1.key))] = nil
        if let n = networkSessions[s.network] { networkSessions[s.network] = n > 1 ? n - 1 : nil }
        slots[Int(slot)].live = false
        free.append(slot)
        sessionCount -= 1
    }

    mutating func unbindEnd(_ slot: UInt32, _ end: Int) {
        markFastPath(slot)
        if slots[Int(slot)].active { activeCount -= 1 }
        forgetIndices(slot, end)
        forgetIndices(slot, 1 - end)
        unlink(slot, end)
        let s = slots[Int(slot)]
        let peer = RelaySessions.digest(PeerKey(network: s.network, key: s[end].key))
        if let n = perPeer[peer] { perPeer[peer] = n > 1 ? n - 1 : nil }
        slots[Int(slot)][end].bound = false
        slots[Int(slot)][end].address = SocketAddress(ip: .ipv4Any, port: 0)
        if !slots[Int(slot)][1 - end].bound { release(slot) }
    }

    private mutating func link(_ slot: UInt32, _ end: Int) {
        let address = slots[Int(slot)][end].address
        slots[Int(slot)][end].next = byAddress[address] ?? RelaySessions.none
        byAddress[address] = RelaySessions.ref(slot, end)
    }

    private mutating func unlink(_ slot: UInt32, _ end: Int) {
        let address = slots[Int(slot)][end].address
        let me = RelaySessions.ref(slot, end)
        let after = slots[Int(slot)][end].next
        guard var r = byAddress[address] else { return }
        if r == me {
            byAddress[address] = after == RelaySessions.none ? nil : after
            return
        }
        while r != RelaySessions.none {
            let next = slots[Int(r >> 1)][Int(r & 1)].next
            if next == me {
                slots[Int(r >> 1)][Int(r & 1)].next = after
                return
            }
            r = next
        }
    }

    /// The end moved (a NAT rebinding, bound afresh from its new address): its chain and the
    /// index entries keyed by its old address move with it.
    private mutating func rebind(_ slot: UInt32, _ end: Int, to address: SocketAddress) {
        markFastPath(slot)
        unlink(slot, end)
        let old = slots[Int(slot)][end].address
        let ring = slots[Int(slot)][end].carried
        for i in 0..<Int(ring.count) {
            let k = IndexKey(index: ring[i], source: old)
            if let dest = byIndex[k], dest >> 1 == slot {
                byIndex[k] = nil
                byIndex[IndexKey(index: ring[i], source: address)] = dest
            }
        }
        slots[Int(slot)][end].address = address
        link(slot, end)
    }
}
