import FerryCore

/// The native relay's kernel table (the XDP program's `relay4` and `relay_counts` maps).
public protocol RelayFlowTable: KernelFlowTable where Key == RelayFastPath.Key, Entry == RelayFastPath.Entry {}

/// What the kernel fast path holds for the native relay (docs/xdp.md), kept by ferryd as the
/// single source of truth: the forwardable part of `RelaySessions`' index table. A (source,
/// receiver index) is forwardable when its session is active, both ends are UDP over IPv4 (the
/// program's reach) and the session is within its bandwidth. Every change to a session's
/// indices or addresses marks its slot (`RelaySessions.fastPathDirty`); `sync` then makes the
/// kernel's entries for those slots equal to what they should be, so an entry leaves the kernel
/// in the same batch its index leaves user space (unbind, expiry, rebinding, a forgotten index).
///
/// The kernel's forwarding is read back once a second (`collect`): per session and direction,
/// packets and bytes join the session's own counts, the sending end counts as heard from (so
/// idle expiry sees the traffic user space never did), and the bandwidth bucket is charged; a
/// session over its bandwidth leaves the fast path until its bucket refills.
///
/// Ownership: the relay's worker (a value in `RelayService`, like the sessions).
public struct RelayFastPath {
    public struct Key: Hashable, Sendable {
        public var source: SocketAddress
        /// As `WireGuardMessage.receiverIndex` reads it.
        public var index: UInt32
    }

    public struct Entry: Equatable, Sendable {
        public var dest: SocketAddress
        /// The slot of the kernel's counters for this session and direction (handed out here).
        public var counter: UInt32
    }

    /// Installed entries and the slot that owns each (a key moves between slots on a collision).
    private(set) var installed = InstalledEntries<Key, Entry, UInt32>()
    private var bySlot: [UInt32: [Key]] = [:]
    /// Per slot: what was read of its two counters so far (to turn totals into deltas).
    private var seen: [UInt32: (p0: UInt64, b0: UInt64, p1: UInt64, b1: UInt64)] = [:]
    /// Sessions over their bandwidth, kept in user space until their bucket refills.
    private var throttled: Set<UInt32> = []
    /// Kernel refusals (a full map, or no counter slot free): the flow stays in user space.
    public private(set) var refused: UInt64 = 0
    /// Counter slots, a pair per session (one per direction).
    private var pool: CounterPairPool
    private var counterBase: [UInt32: UInt32] = [:]

    /// A mirror for a kernel that holds at most `capacity` sessions at once.
    public init(capacity: Int = 1 << 20) {
        pool = CounterPairPool(capacity: capacity)
    }

    /// Entries in the kernel now.
    public var count: Int { installed.count }

    /// Makes the kernel's entries for every slot marked since the last call what they should be.
    /// Returns what the kernel forwarded for sessions that left the fast path (read before their
    /// counters are let go), for the relay's totals.
    public mutating func sync<T: RelayFlowTable>(_ sessions: inout RelaySessions, table: inout T) -> (packets: UInt64, bytes: UInt64) {
        guard !sessions.fastPathDirty.isEmpty else { return (0, 0) }
        var total: (packets: UInt64, bytes: UInt64) = (0, 0)
        let dirty = sessions.fastPathDirty
        sessions.fastPathDirty.removeAll(keepingCapacity: true)
        var done = Set<UInt32>()
        for slot in dirty where done.insert(slot).inserted {
            let before = bySlot[slot] ?? []
            var base = counterBase[slot]
            var wanted: [Key: Entry] = [:]
            if !throttled.contains(slot) && RelayFastPath.isForwardable(slot, in: sessions) {
                if base == nil, let fresh = pool.take() {
                    table.reset(counter: fresh)
                    table.reset(counter: fresh + 1)
                    seen[slot] = (0, 0, 0, 0)
                    counterBase[slot] = fresh
                    base = fresh
                }
                if let base {
                    wanted = RelayFastPath.forwardable(slot, in: sessions, counters: base)
                } else {
                    refused &+= 1
                }
            }
            if !before.isEmpty && wanted.isEmpty {
                let got = read(slot, table: table, sessions: &sessions, now: nil)
                total.packets &+= got.packets
                total.bytes &+= got.bytes
            }
            let (keys, refusals) = installed.apply(slot, before: before, wanted: wanted, table: &table)
            refused &+= refusals
            if keys.isEmpty {
                bySlot[slot] = nil
                seen[slot] = nil
                if let base = counterBase.removeValue(forKey: slot) { pool.give(base) }
            } else {
                bySlot[slot] = keys
            }
        }
        return total
    }

    /// Once a second, before the sessions' sweep: reads what the kernel forwarded per session
    /// into the sessions (counts, liveness, bandwidth) and returns the totals for the metrics.
    /// A session over its bandwidth leaves the fast path; one back under it returns.
    public mutating func collect<T: RelayFlowTable>(_ sessions: inout RelaySessions, table: inout T, now: UInt64) -> (packets: UInt64, bytes: UInt64) {
        var total: (packets: UInt64, bytes: UInt64) = (0, 0)
        for slot in bySlot.keys {
            let got = read(slot, table: table, sessions: &sessions, now: now)
            total.packets &+= got.packets
            total.bytes &+= got.bytes
            if sessions.limits.bandwidth > 0 && sessions.slots[Int(slot)].bucket.tokens < 0 {
                throttled.insert(slot)
                sessions.fastPathDirty.append(slot)
            }
        }
        for slot in throttled {
            guard sessions.slots.indices.contains(Int(slot)), sessions.slots[Int(slot)].live else {
                throttled.remove(slot)
                continue
            }
            var bucket = sessions.slots[Int(slot)].bucket
            bucket.refill(rate: sessions.limits.bandwidth, capacity: sessions.limits.burst, now: now)
            sessions.slots[Int(slot)].bucket = bucket
            // Back when the bucket is full again: the kernel is read once a second, so a session
            // can pass its bandwidth by a second's forwarding before it leaves; user space then
            // holds it to the limit packet by packet until it has earned a full burst.
            if bucket.tokens >= sessions.limits.burst && bySlot[slot] == nil {
                throttled.remove(slot)
                sessions.fastPathDirty.append(slot)
            }
        }
        let back = sync(&sessions, table: &table)
        return (total.packets &+ back.packets, total.bytes &+ back.bytes)
    }

    /// Deltas of `slot`'s two counters since the last read, applied to its session (when `now`
    /// is given: the sending end heard from, the bucket charged).
    private mutating func read<T: RelayFlowTable>(_ slot: UInt32, table: T, sessions: inout RelaySessions, now: UInt64?) -> (packets: UInt64, bytes: UInt64) {
        guard var last = seen[slot], let base = counterBase[slot] else { return (0, 0) }
        let to0 = table.read(counter: base)
        let to1 = table.read(counter: base + 1)
        let packets = (to0.packets &- last.p0) &+ (to1.packets &- last.p1)
        let bytes = (to0.bytes &- last.b0) &+ (to1.bytes &- last.b1)
        let heard = (to0.packets != last.p0, to1.packets != last.p1)
        last = (to0.packets, to0.bytes, to1.packets, to1.bytes)
        seen[slot] = last
        guard packets > 0, sessions.slots[Int(slot)].live else { return (packets, bytes) }
        sessions.slots[Int(slot)].packets &+= packets
        sessions.slots[Int(slot)].bytes &+= bytes
        if let now {
            let seconds = UInt32(truncatingIfNeeded: now / 1_000_000_000)
            // Packets to end 0 were sent by end 1, and the other way round.
            if heard.0 { sessions.slots[Int(slot)].ends.1.lastSeen = seconds }
            if heard.1 { sessions.slots[Int(slot)].ends.0.lastSeen = seconds }
            if sessions.limits.bandwidth > 0 {
                sessions.slots[Int(slot)].bucket.refill(rate: sessions.limits.bandwidth, capacity: sessions.limits.burst, now: now)
                sessions.slots[Int(slot)].bucket.spend(Double(bytes))
            }
        }
        return (packets, bytes)
    }

    /// Whether `slot`'s session can be forwarded in the kernel at all: active, both ends UDP
    /// over IPv4 (the program's reach; stream ends and IPv6 stay in user space).
    static func isForwardable(_ slot: UInt32, in sessions: RelaySessions) -> Bool {
        guard sessions.slots.indices.contains(Int(slot)) else { return false }
        let s = sessions.slots[Int(slot)]
        return s.live && s.active && s.ends.0.address.port != 0 && s.ends.1.address.port != 0
            && s.ends.0.address.ip.isIPv4 && s.ends.1.address.ip.isIPv4
    }

    /// The entries `slot` should have in the kernel: each end's carried indices that still lead
    /// to its partner. Packets to end e count under `counters + e`.
    static func forwardable(_ slot: UInt32, in sessions: RelaySessions, counters: UInt32) -> [Key: Entry] {
        let s = sessions.slots[Int(slot)]
        var out: [Key: Entry] = [:]
        for from in 0...1 {
            let e = s[from]
            let dest = RelaySessions.ref(slot, 1 - from)
            for i in 0..<Int(e.carried.count) {
                let index = e.carried[i]
                guard sessions.byIndex[RelaySessions.IndexKey(index: index, source: e.address)] == dest else { continue }
                out[Key(source: e.address, index: index)] = Entry(dest: s[1 - from].address, counter: counters + UInt32(1 - from))
            }
        }
        return out
    }
}
