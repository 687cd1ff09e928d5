/// Identifies a scheduled timer so it can be cancelled.
public struct TimerID: Hashable, Sendable {
    public let value: UInt64
}

/// A hashed timing wheel (Varghese & Lauck): O(1) schedule and cancel, and per tick only the
/// entries of one slot are looked at. Pure: the caller passes the time, so it is tested with a
/// fake clock. A timer fires at the first `advance(to:)` at or after its deadline, rounded up
/// to the tick. Used for the rare per-connection timers (handshake and idle timeouts); mass
/// expiry of permissions and channels uses the once-a-second sweep instead (as coturn does).
public struct TimerWheel<Payload> {
    struct Entry {
        let id: UInt64
        let deadlineTick: UInt64
        let payload: Payload
    }

    public let tickNanos: UInt64
    private var slots: [[Entry]]
    private let mask: UInt64
    /// Every tick below this one has been processed.
    private var nextTick: UInt64
    private var slotOf: [UInt64: Int] = [:]
    private var lastID: UInt64 = 0

    /// `slotCount` is rounded up to a power of two.
    public init(tickNanos: UInt64 = 10_000_000, slotCount: Int = 1024, now: UInt64) {
        precondition(tickNanos > 0 && slotCount > 0)
        var n = 1
        while n < slotCount { n <<= 1 }
        self.tickNanos = tickNanos
        self.slots = Array(repeating: [], count: n)
        self.mask = UInt64(n - 1)
        self.nextTick = now / tickNanos + 1
    }

    public var count: Int { slotOf.count }
    public var isEmpty: Bool { slotOf.isEmpty }

    @discardableResult
    public mutating func schedule(at deadline: UInt64, _ payload: Payload) -> TimerID {
        lastID += 1
        // Round up so that a timer never fires before its deadline, and never in a tick
        // that has already been processed.
        let tick = max((deadline + tickNanos - 1) / tickNanos, nextTick)
        let slot = Int(tick & mask)
        slots[slot].append(Entry(id: lastID, deadlineTick: tick, payload: payload))
        slotOf[lastID] = slot
        return TimerID(value: lastID)
    }

    /// Removes a timer; false when it already fired or was cancelled.
    @discardableResult
    public mutating func cancel(_ id: TimerID) -> Bool {
        guard let slot = slotOf.removeValue(forKey: id.value) else { return false }
        if let i = slots[slot].firstIndex(where: { $0.id == id.value }) {
            slots[slot].remove(at: i)
        }
        return true
    }

    /// Fires (appends to `fired`, in deadline order per slot) every timer due at `now`.
    public mutating func advance(to now: UInt64, into fired: inout [Payload]) {
        let nowTick = now / tickNanos
        guard nowTick >= nextTick else { return }
        // After a long stall, one pass over every slot is enough.
        let span = min(nowTick - nextTick + 1, mask + 1)
        var tick = nextTick
        for _ in 0..<span {
            let slot = Int(tick & mask)
            if !slots[slot].isEmpty {
                var keep: [Entry] = []
                for entry in slots[slot] {
                    if entry.deadlineTick <= nowTick {
                        slotOf[entry.id] = nil
                        fired.append(entry.payload)
                    } else {
                        keep.append(entry)
                    }
                }
                slots[slot] = keep
            }
            tick += 1
        }
        nextTick = nowTick + 1
    }

    /// Nanoseconds from `now` until the next tick boundary, or nil when nothing is scheduled:
    /// the loop's epoll timeout.
    public func nanosUntilNextTick(now: UInt64) -> UInt64? {
        if slotOf.isEmpty { return nil }
        let boundary = nextTick * tickNanos
        return boundary > now ? boundary - now : 0
    }
}
