import FerryWire

/// WireGuard's packets for a peer that has no path yet, held for a moment instead of dropped.
///
/// Why: the controlled ICE agent selects a pair only once its own check of it succeeds (a
/// nominating request alone proves nothing: it replays from anywhere), one round trip after the
/// peer's nomination. A peer such as aioice sends data as soon as its nomination succeeds, and
/// WireGuard answers at once: those answers wait here and leave when the pair is selected.
/// Bounded in count and age; nothing is held once a path exists. Storage is made on first use
/// (only a link that ever waits pays for it), with ChannelData headroom in front of each packet
/// so the relayed path writes its header in place as it does for the receive batch.
struct HeldPackets {
    static let capacity = 32
    static let maxAge: UInt64 = 1_000_000_000
    static let slotSize = 2048
    static let headroom = ChannelData.headerLength

    private var storage: [UInt8] = []
    private var lengths = [Int](repeating: 0, count: capacity)
    private var times = [UInt64](repeating: 0, count: capacity)
    private var head = 0
    private(set) var count = 0
    /// Packets that did not fit or grew too old (the link counts them as dropped).
    private(set) var dropped: UInt64 = 0

    /// Keeps a copy of `length` bytes; the oldest goes when full.
    mutating func hold(_ data: UnsafeRawPointer, _ length: Int, now: UInt64) {
        guard length <= HeldPackets.slotSize - HeldPackets.headroom else {
            dropped &+= 1
            return
        }
        if storage.isEmpty { storage = [UInt8](repeating: 0, count: HeldPackets.capacity * HeldPackets.slotSize) }
        if count == HeldPackets.capacity {
            head = (head + 1) % HeldPackets.capacity
            count -= 1
            dropped &+= 1
        }
        let slot = (head + count) % HeldPackets.capacity
        storage.withUnsafeMutableBytes { s in
            (s.baseAddress! + slot * HeldPackets.slotSize + HeldPackets.headroom).copyMemory(from: data, byteCount: length)
        }
        lengths[slot] = length
        times[slot] = now
        count += 1
    }

    /// Hands every packet younger than `maxAge` to `send` (a pointer with `headroom` writable
    /// bytes in front), oldest first, and empties the queue.
    mutating func drain(now: UInt64, _ send: (UnsafeMutableRawPointer, Int) -> Void) {
        guard count > 0 else { return }
        storage.withUnsafeMutableBytes { s in
            for k in 0..<count {
                let slot = (head + k) % HeldPackets.capacity
                if now > times[slot] + HeldPackets.maxAge {
                    dropped &+= 1
                    continue
                }
                send(s.baseAddress! + slot * HeldPackets.slotSize + HeldPackets.headroom, lengths[slot])
            }
        }
        head = 0
        count = 0
    }
}
