import CFerryLinux

/// A counter slot: an index into every worker's counter block.
public struct CounterID: Hashable, Sendable {
    public let index: Int
    @inlinable public init(index: Int) { self.index = index }
}

/// A histogram: `bucketCount` slots, then sum, then count, in every worker's block.
public struct HistogramID: Sendable {
    public let first: Int
    public let bounds: [UInt64]

    public init(first: Int, bounds: [UInt64]) {
        self.first = first
        self.bounds = bounds
    }

    /// Records one observation. Called per batch, never per packet.
    @inlinable
    public func observe(_ value: UInt64, in block: CounterBlock) {
        var i = 0
        while i < bounds.count && value > bounds[i] { i += 1 }
        block.add(CounterID(index: first + i), 1)
        block.add(CounterID(index: first + bounds.count + 1), value)
        block.add(CounterID(index: first + bounds.count + 2), 1)
    }
}

/// One worker's counters: plain memory written only by its own thread (relaxed stores, no
/// read-modify-write, no lock) and summed by the scraper at `/metrics` time.
public struct CounterBlock: @unchecked Sendable {
    public let base: UnsafeMutablePointer<UInt64>

    public init(base: UnsafeMutablePointer<UInt64>) { self.base = base }

    /// A block of `count` zeroed slots, for tests and tools (never freed).
    public static func standalone(count: Int = 4096) -> CounterBlock {
        let p = UnsafeMutablePointer<UInt64>.allocate(capacity: count)
        p.initialize(repeating: 0, count: count)
        return CounterBlock(base: p)
    }

    @inlinable @inline(__always)
    public func add(_ id: CounterID, _ n: UInt64 = 1) {
        ferry_counter_add(base + id.index, n)
    }

    /// For gauges owned by one worker (active allocations on that worker).
    @inlinable @inline(__always)
    public func set(_ id: CounterID, _ v: UInt64) {
        ferry_counter_set(base + id.index, v)
    }

    @inlinable
    public func load(_ id: CounterID) -> UInt64 { ferry_counter_load(base + id.index) }
}

