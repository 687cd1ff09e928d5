import FerryCore

/// Token buckets keyed by source, bounded in size: the per-source limit on 401 answers, so the
/// server cannot be made to reflect traffic at a spoofed address. Owned by one worker.
public struct RateLimiter<Key: Hashable> {
    public let ratePerSecond: Double
    public let burst: Double
    public let maxKeys: Int
    private var buckets: [Key: TokenBucket] = [:]

    public init(ratePerSecond: Double, burst: Double, maxKeys: Int = 65536) {
        self.ratePerSecond = ratePerSecond
        self.burst = max(1, burst)
        self.maxKeys = maxKeys
    }

    /// Takes one token for `key` at monotonic `now` (ns); false when the bucket is empty, or when
    /// the table is full of other sources (fail closed under a spoofed-source flood).
    public mutating func allow(_ key: Key, now: UInt64) -> Bool {
        if ratePerSecond <= 0 { return true }
        if var b = buckets[key] {
            let allowed = b.take(1, rate: ratePerSecond, capacity: burst, now: now)
            buckets[key] = b
            return allowed
        }
        guard buckets.count < maxKeys else { return false }
        var b = TokenBucket(capacity: burst, now: now)
        b.spend(1)
        buckets[key] = b
        return true
    }

    /// Forgets sources whose buckets have been full for a while (called by the sweep).
    public mutating func sweep(now: UInt64) {
        guard ratePerSecond > 0 else {
            buckets.removeAll()
            return
        }
        let refill = UInt64(burst / ratePerSecond * 1e9)
        buckets = buckets.filter { now &- $0.value.last < refill }
    }

    public var count: Int { buckets.count }
}
