import FerryCore
import FerrySystem
import FerryTURN

/// One worker's relayed sockets, addressed by `RelayID(slot, generation)`. TURN state stores ids,
/// never descriptor numbers: closing a socket bumps its slot's generation, so an id kept past the
/// close no longer resolves, while a kernel descriptor number would name the next socket to get it.
///
/// Two views of one table: `fds` (a slab of values: descriptor and generation, resolved per
/// packet by an index and a compare, no hashing, no retain; and for TURN to TURN the socket's
/// address and allocation) and `sockets` (the event handlers, touched only when a relay opens or
/// closes). Owned by the worker's loop thread.
struct RelayTable {
    struct Entry {
        var fd: Int32 = -1
        var generation: UInt32 = 0
        /// The relayed address as bound, and the allocation (slot, generation) it serves.
        var local = SocketAddress(ip: .ipv4Any, port: 0)
        var allocation: Int32 = -1
        var allocationGeneration: UInt32 = 0
    }
    private(set) var fds: UnsafeMutablePointer<Entry>
    private(set) var capacity: Int
    private var sockets: [RelaySocket?] = []
    private var free: [Int32] = []
    private(set) var count = 0

    init(initialCapacity: Int = 64) {
        capacity = initialCapacity
        fds = .allocate(capacity: capacity)
        fds.initialize(repeating: Entry(), count: capacity)
    }

    func release() {
        fds.deinitialize(count: capacity)
        fds.deallocate()
    }

    /// The descriptor `id` names, or -1 when its socket is closed.
    @inline(__always)
    func fd(_ id: RelayID) -> Int32 {
        guard id.slot >= 0 && Int(id.slot) < capacity else { return -1 }
        let e = fds[Int(id.slot)]
        return e.generation == id.generation ? e.fd : -1
    }

    /// The slab entry `id` names, or nil when its socket is closed.
    @inline(__always)
    func entry(_ id: RelayID) -> Entry? {
        guard id.slot >= 0 && Int(id.slot) < capacity else { return nil }
        let e = fds[Int(id.slot)]
        return e.generation == id.generation && e.fd >= 0 ? e : nil
    }

    func socket(_ id: RelayID) -> RelaySocket? {
        guard fd(id) >= 0 else { return nil }
        return sockets[Int(id.slot)]
    }

    /// Takes a slot for `socket`; the table grows (control path) when full.
    mutating func insert(_ socket: RelaySocket) -> RelayID {
        let slot: Int32
        if let reused = free.popLast() {
            slot = reused
        } else {
            if sockets.count == capacity { grow() }
            slot = Int32(sockets.count)
            sockets.append(nil)
        }
        let generation = fds[Int(slot)].generation &+ 1
        fds[Int(slot)] = Entry(fd: socket.fd.raw, generation: generation, local: socket.local,
                               allocation: socket.slot, allocationGeneration: socket.generation)
        sockets[Int(slot)] = socket
        count += 1
        return RelayID(slot: slot, generation: generation)
    }

    /// Frees `id`'s slot and returns its socket (the caller closes it); nil for a stale id.
    mutating func remove(_ id: RelayID) -> RelaySocket? {
        guard let s = socket(id) else { return nil }
        fds[Int(id.slot)].fd = -1
        fds[Int(id.slot)].generation &+= 1
        sockets[Int(id.slot)] = nil
        free.append(id.slot)
        count -= 1
        return s
    }

    private mutating func grow() {
        let bigger = UnsafeMutablePointer<Entry>.allocate(capacity: capacity * 2)
        bigger.moveInitialize(from: fds, count: capacity)
        (bigger + capacity).initialize(repeating: Entry(), count: capacity)
        fds.deallocate()
        fds = bigger
        capacity *= 2
    }
}
