/// A kernel table a fast path mirrors user space's forwarding decisions into (the XDP program's
/// maps; a dictionary in tests): entries by key, and per-CPU counters by slot that the kernel
/// adds to and user space reads back. Called on one worker's thread after a batch that changed
/// something and once a second: never per packet. The native relay (`RelayFastPath`) and TURN
/// (`TURNFastPath`) each name their key and entry.
public protocol KernelFlowTable {
    associatedtype Key: Hashable
    associatedtype Entry
    /// Inserts or replaces; false when the kernel refused (the flow stays in user space).
    mutating func set(_ key: Key, _ entry: Entry) -> Bool
    mutating func remove(_ key: Key)
    /// What the kernel forwarded under `counter` since it was reset, summed over CPUs.
    func read(counter: UInt32) -> (packets: UInt64, bytes: UInt64)
    mutating func reset(counter: UInt32)
}

/// Pairs of a kernel counter map's slots (one per direction), handed out from a fixed range:
/// the map is sized for what the kernel may hold at once, not for every session.
public struct CounterPairPool: Sendable {
    private let capacity: UInt32
    private let offset: UInt32
    private var free: [UInt32] = []
    private var next: UInt32 = 0

    /// `capacity` pairs, from slot `offset` on.
    public init(capacity: Int, offset: UInt32 = 0) {
        self.capacity = UInt32(capacity)
        self.offset = offset
    }

    /// The first slot of a free pair, or nil when all are taken.
    public mutating func take() -> UInt32? {
        if let base = free.popLast() { return base }
        guard next / 2 < capacity else { return nil }
        defer { next += 2 }
        return offset + next
    }

    public mutating func give(_ base: UInt32) { free.append(base) }
}

/// The entries a fast path has put in its kernel table, each owned by one slot (a session or an
/// allocation): a key can move between slots, and only its owner may remove it.
public struct InstalledEntries<Key: Hashable, Entry: Equatable, Slot: Hashable> {
    public private(set) var entries: [Key: (slot: Slot, entry: Entry)] = [:]
    public init() {}

    public var count: Int { entries.count }

    /// Makes `slot`'s entries in `table` equal `wanted`, given the keys it held (`before`).
    /// Returns the keys it holds now and how many the kernel refused (those stay in user space).
    public mutating func apply<T: KernelFlowTable>(_ slot: Slot, before: [Key], wanted: [Key: Entry], table: inout T) -> (keys: [Key], refused: UInt64)
        where T.Key == Key, T.Entry == Entry {
        for key in before where wanted[key] == nil && entries[key]?.slot == slot {
            table.remove(key)
            entries[key] = nil
        }
        var keys: [Key] = []
        var refused: UInt64 = 0
        for (key, entry) in wanted {
            if entries[key]?.entry != entry || entries[key]?.slot != slot {
                guard table.set(key, entry) else {
                    refused += 1
                    continue
                }
                entries[key] = (slot, entry)
            }
            keys.append(key)
        }
        return (keys, refused)
    }
}
