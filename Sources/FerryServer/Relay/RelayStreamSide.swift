import FerryCore
import FerrySystem
import FerryWire
import FerryRelay

/// The native relay's stream side on one worker (docs/relay-protocol.md, "Stream side"): a TCP
/// or TLS connection whose first STUN message is a FERRY-BIND is a session end with no UDP
/// address. Its frames (STUN control messages; WireGuard messages framed as ChannelData on
/// channel 0x4000, padded to 4) go to the relay's worker in one batch per loop iteration; what the
/// relay routes to the connection comes back the same way and is written framed alike.
///
/// Not the fast path (a peer whose UDP is blocked already pays TCP and TLS): each packet is
/// copied once into the batch, and a batch is one allocation, for any number of packets.
///
/// Ownership: the worker's loop thread. `worker` is `unowned` as TURNService's is: a worker
/// owns its services and outlives them.
final class RelayStreamSide {
    private unowned let worker: Worker
    private let hub: RelayStreamHub
    private let counters: RelayCounters
    private var outbox: [UInt8] = []
    /// One frame being written to a connection (header, the largest message, padding).
    private let frame: UnsafeMutableRawPointer
    static let channel: UInt16 = 0x4000

    init(worker: Worker, hub: RelayStreamHub, counters: RelayCounters) {
        self.worker = worker
        self.hub = hub
        self.counters = counters
        frame = .allocate(byteCount: 4 + 65536 + 4, alignment: 8)
        worker.loop.onIterationEnd { [weak self] in self?.flush() }
    }

    deinit { frame.deallocate() }

    /// Whether a stream that starts with these bytes is the relay's: STUN whose method is FERRY-BIND.
    /// nil while fewer than two bytes have arrived.
    static func claims(_ b: UnsafeRawBufferPointer) -> Bool? {
        guard b.count >= 2 else { return nil }
        guard b[0] & 0xC0 == 0 else { return false }
        let type = UInt16(b[0]) << 8 | UInt16(b[1])
        let method = (type & 0x000F) | (type & 0x00E0) >> 1 | (type & 0x3E00) >> 2
        return method == RelayProtocol.bindMethod
    }

    /// The relay took the connection: counted once.
    func opened(_ conn: StreamConnection) { worker.metrics.add(counters.streams) }

    /// Frames at the front of `input`; the bytes used, or nil for a framing error (closed as a
    /// protocol error). Copied into the batch, so nothing points into `input` afterwards.
    func consume(_ input: UnsafeRawBufferPointer, from conn: StreamConnection) -> Int? {
        var used = 0
        while used < input.count {
            let rest = UnsafeRawBufferPointer(rebasing: input[used...])
            switch StreamFraming.next(rest, maxFrame: StreamConnection.maxFrame) {
            case .incomplete:
                return used
            case .invalid:
                worker.metrics.add(counters.drops[.malformed])
                return nil
            case .stun(let length):
                post(conn.id, .control, UnsafeRawBufferPointer(rebasing: rest[0..<length]))
                used += length
            case .channelData(let channel, let payload, let frameLength):
                guard channel == RelayStreamSide.channel else {
                    worker.metrics.add(counters.drops[.malformed])
                    return nil
                }
                post(conn.id, .wireGuard, UnsafeRawBufferPointer(rebasing: rest[4..<(4 + payload)]))
                used += frameLength
            }
        }
        return used
    }

    func connectionClosed(_ conn: StreamConnection) {
        // Always sent, whatever the budget: the relay must unbind the ends.
        RelayHandoff.append(&outbox, connection: conn.id, kind: .closed, UnsafeRawBufferPointer(start: nil, count: 0))
    }

    private func post(_ id: ConnectionID, _ kind: RelayHandoff.Kind, _ bytes: UnsafeRawBufferPointer) {
        guard hub.hasRoom(hub.toRelay, pending: outbox.count, RelayHandoff.headerLength + bytes.count) else {
            worker.metrics.add(counters.drops[.handoffFull])
            return
        }
        RelayHandoff.append(&outbox, connection: id, kind: kind, bytes)
    }

    /// End of the loop iteration: this iteration's records go to the relay's worker.
    private func flush() {
        guard !outbox.isEmpty else { return }
        let batch = outbox
        let from = worker.loop.index
        outbox.removeAll(keepingCapacity: true)
        hub.toRelay.add(batch.count, ordering: .relaxed)
        hub.loops[hub.relayWorker].execute { [hub] l in
            hub.relay?.fromStreams(batch, worker: from, now: l.now)
            hub.toRelay.subtract(batch.count, ordering: .relaxed)
        }
    }

    /// What the relay routed to this worker's connections: written framed; a connection gone or
    /// whose write queue is full drops it (counted).
    func deliver(_ batch: [UInt8]) {
        RelayHandoff.forEach(batch) { id, kind, bytes in
            guard let conn = worker.connection(id), !conn.closed else {
                worker.metrics.add(counters.drops[.streamClosed])
                return
            }
            switch kind {
            case .control:
                conn.enqueue(bytes, droppable: false)
            case .wireGuard where bytes.count > 0:
                let padded = (bytes.count + 3) & ~3
                ChannelData.writeHeader(channel: RelayStreamSide.channel, length: bytes.count, at: frame)
                (frame + 4).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
                (frame + 4 + bytes.count).initializeMemory(as: UInt8.self, repeating: 0, count: padded - bytes.count)
                if !conn.enqueue(UnsafeRawBufferPointer(start: frame, count: 4 + padded), droppable: true) {
                    worker.metrics.add(counters.drops[.streamFull])
                }
            case .wireGuard, .closed:
                break
            }
        }
        hub.toStreams.subtract(batch.count, ordering: .relaxed)
    }
}
