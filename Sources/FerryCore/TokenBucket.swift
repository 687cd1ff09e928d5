/// A token bucket (the one every limit uses: the TURN bandwidth per allocation, the per-source
/// limit on 401 answers, signaling's per-peer message and byte rates). Rate and capacity are the
/// owner's settings, passed in, so a bucket is 16 bytes and a slab of allocations stays small.
/// Times are monotonic nanoseconds handed in: no clock is read here.
public struct TokenBucket: Sendable {
    public var tokens: Double
    public var last: UInt64

    /// A full bucket at `now`.
    public init(capacity: Double, now: UInt64) {
        tokens = capacity
        last = now
    }

    /// Adds what `rate` tokens per second earned since the last refill, up to `capacity`.
    @inlinable
    public mutating func refill(rate: Double, capacity: Double, now: UInt64) {
        let elapsed = Double(now &- last) / 1e9
        tokens = min(capacity, tokens + elapsed * rate)
        last = now
    }

    /// Whether `cost` tokens are there (after a refill).
    @inlinable public func has(_ cost: Double) -> Bool { tokens >= cost }

    @inlinable public mutating func spend(_ cost: Double) { tokens -= cost }

    /// Refills, then takes `cost` if it is there; false (nothing taken) when it is not.
    @inlinable
    public mutating func take(_ cost: Double, rate: Double, capacity: Double, now: UInt64) -> Bool {
        refill(rate: rate, capacity: capacity, now: now)
        guard tokens >= cost else { return false }
        tokens -= cost
        return true
    }
}
