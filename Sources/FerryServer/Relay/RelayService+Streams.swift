import FerryCore
import FerrySystem
import FerryRelay

/// The relay's half of the stream side (RelayStreamSide has the other): stream ends' messages
/// routed like datagrams from their synthetic addresses (`RelayStreamEnd`), and what the relay
/// routes to stream ends batched back to their workers.
extension RelayService {
    func attach(hub: RelayStreamHub) {
        self.hub = hub
        streamOutboxes = Array(repeating: [], count: hub.loops.count)
    }

    /// A batch from worker `from`'s stream side, on the relay's worker.
    func fromStreams(_ batch: [UInt8], worker from: Int, now: UInt64) {
        guard var table = sessions.take() else { return }
        defer {
            syncFastPath(&table)
            sessions = table
        }
        var wall: UInt64 = 0
        var packets: UInt64 = 0, bytes: UInt64 = 0
        let (socket4, socket6) = (udpSocket4, udpSocket6)
        RelayHandoff.forEach(batch) { id, kind, m in
            let source = RelayStreamEnd.address(worker: from, connection: id)
            switch kind {
            case .closed:
                table.unbindAll(at: source)
            case .control:
                if wall == 0 { wall = wallClockSeconds() }
                let out = UnsafeMutableRawBufferPointer(start: replies, count: RelayService.replySlot)
                let (len, result) = control.handle(m, from: source, now: now, wall: wall, sessions: &table, reply: out)
                metrics.add(counters.binds[result])
                if len > 0 { toStream(source, .control, UnsafeRawBufferPointer(start: out.baseAddress, count: len)) }
            case .wireGuard:
                guard m.count > 0, let dest = forward(m.baseAddress!, m.count, from: source, now: now, table: &table) else { return }
                packets += 1
                bytes += UInt64(m.count)
                if dest.port == 0 {
                    toStream(dest, .wireGuard, m)
                } else if let socket = dest.ip.isIPv4 ? socket4 : socket6 {
                    if socket.toClient.isFull { _ = socket.flush(metrics: metrics) }
                    socket.toClient.append(m.baseAddress!, m.count, to: dest)
                }
            }
        }
        // The queue points into `batch`: sent while it is alive.
        if let socket4 { _ = socket4.flush(metrics: metrics) }
        if let socket6 { _ = socket6.flush(metrics: metrics) }
        flushStreams()
        if packets > 0 {
            metrics.add(counters.packets, packets)
            metrics.add(counters.bytes, bytes)
        }
    }

    /// Queues a message for the stream end `dest` names (copied: the source buffer is reused).
    func toStream(_ dest: SocketAddress, _ kind: RelayHandoff.Kind, _ bytes: UnsafeRawBufferPointer) {
        guard let hub, let (w, id) = RelayStreamEnd.decode(dest), w < streamOutboxes.count else { return }
        guard hub.hasRoom(hub.toStreams, pending: streamOutboxes[w].count, RelayHandoff.headerLength + bytes.count) else {
            metrics.add(counters.drops[.handoffFull])
            return
        }
        RelayHandoff.append(&streamOutboxes[w], connection: id, kind: kind, bytes)
    }

    /// The end of a batch: each worker's records leave in one post.
    func flushStreams() {
        guard let hub else { return }
        for w in streamOutboxes.indices where !streamOutboxes[w].isEmpty {
            let batch = streamOutboxes[w]
            streamOutboxes[w].removeAll(keepingCapacity: true)
            hub.toStreams.add(batch.count, ordering: .relaxed)
            hub.loops[w].execute { [hub] l in hub.sides[l.index].deliver(batch) }
        }
    }
}
