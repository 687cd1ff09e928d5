import Synchronization
import FerryCore

/// TURN to TURN across workers (`turn.short_circuit`, docs/turn.md): a datagram from an
/// allocation on one worker to the relayed address of an allocation on another is handed to
/// that worker in a batch, instead of crossing the kernel through two relayed sockets. Which
/// worker holds a relayed port follows from the port itself: each worker relays from its own
/// block of `turn.port_min`…`turn.port_max`.
///
/// Both sides' checks stay where their state lives: the sender's channel or permission and
/// bandwidth on the sending worker (before the hand-off), the receiver's permission for the
/// sender's relayed address and its bandwidth on the receiving worker (`peerRoute`, as for any
/// datagram arriving on the relayed socket). Bytes in flight towards each worker are bounded by
/// `turn.short_circuit_handoff_bytes`; past it a datagram takes the kernel's path (nothing is
/// dropped for it), counted in `ferry_turn_short_circuit_handoff_full_total`.
///
/// Written at set-up (`services`), read-only after, except the per-worker budgets (atomics,
/// touched once per batch: a relaxed load per datagram, a read-modify-write per batch).
final class TURNHandoffHub: @unchecked Sendable {
    final class InFlight: Sendable {
        let bytes = Atomic<Int>(0)
    }

    var services: [TURNService] = []
    let inFlight: [InFlight]
    let budget: Int
    /// `turn.port_min…port_max`, and each worker's share of it.
    let ports: ClosedRange<Int>
    let block: Int

    init(workers: Int, ports: ClosedRange<Int>, block: Int, budget: Int) {
        // Records carry two addresses in 24 bytes each (TURNHandoffBatch).
        precondition(MemoryLayout<SocketAddress>.size <= 24)
        inFlight = (0..<workers).map { _ in InFlight() }
        self.ports = ports
        self.block = max(1, block)
        self.budget = budget
    }

    /// The worker whose block holds relayed port `port` (the last block takes the remainder).
    @inline(__always)
    func worker(forPort port: UInt16) -> Int {
        min(max(0, (Int(port) - ports.lowerBound) / block), inFlight.count - 1)
    }
}

/// One batch of hand-off records for one worker: a buffer made when the batch's first record
/// is written and freed by the receiving worker once delivered (or, were the loop to end first,
/// when the post is dropped). One allocation per batch and destination, never per datagram: it
/// starts with room for a few records of the largest datagram (small enough for the allocator's
/// own bins, not a mapping of its own) and doubles, copying what it holds, up to `limit` (the
/// most one receive batch can hand over), which it never needs to pass.
///
/// A record: the receiver's relayed address, the sender's relayed address (the peer the
/// receiver sees), the payload's length, then the payload at `head`. The head is room enough
/// for a Data indication's header, written in place over it on delivery; the payload is
/// followed by its padding to 4 bytes (ChannelData over a stream).
final class TURNHandoffBatch: @unchecked Sendable {
    static let head = 56
    private(set) var base: UnsafeMutableRawPointer
    private(set) var capacity: Int
    let limit: Int
    private(set) var used = 0

    init(capacity: Int, limit: Int) {
        self.capacity = min(capacity, limit)
        self.limit = limit
        base = .allocate(byteCount: self.capacity, alignment: 8)
    }

    deinit { base.deallocate() }

    @inline(__always)
    static func size(_ length: Int) -> Int { (head + ((length + 3) & ~3) + 7) & ~7 }

    /// Appends a record; false when it would pass `limit`.
    @inline(__always)
    func append(to receiver: SocketAddress, from sender: SocketAddress, _ payload: UnsafeRawPointer, _ length: Int) -> Bool {
        let size = TURNHandoffBatch.size(length)
        if used + size > capacity {
            guard used + size <= limit else { return false }
            grow(to: min(limit, max(capacity * 2, used + size)))
        }
        let r = base + used
        r.storeBytes(of: receiver, as: SocketAddress.self)
        r.storeBytes(of: sender, toByteOffset: 24, as: SocketAddress.self)
        r.storeBytes(of: UInt32(length), toByteOffset: 48, as: UInt32.self)
        (r + TURNHandoffBatch.head).copyMemory(from: payload, byteCount: length)
        used += size
        return true
    }

    private func grow(to bigger: Int) {
        let new = UnsafeMutableRawPointer.allocate(byteCount: bigger, alignment: 8)
        new.copyMemory(from: base, byteCount: used)
        base.deallocate()
        base = new
        capacity = bigger
    }

    /// Each record, in order: receiver, sender, and the payload (with its head in front).
    @inline(__always)
    func forEach(_ body: (SocketAddress, SocketAddress, UnsafeMutableRawPointer, Int) -> Void) {
        var at = 0
        while at < used {
            let r = base + at
            let receiver = r.loadUnaligned(as: SocketAddress.self)
            let sender = r.loadUnaligned(fromByteOffset: 24, as: SocketAddress.self)
            let length = Int(r.loadUnaligned(fromByteOffset: 48, as: UInt32.self))
            body(receiver, sender, r + TURNHandoffBatch.head, length)
            at += TURNHandoffBatch.size(length)
        }
    }
}
