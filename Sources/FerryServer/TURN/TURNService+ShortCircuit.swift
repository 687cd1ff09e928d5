import FerryCore
import FerryTURN
import FerryWire

/// TURN to TURN inside ferryd (`turn.short_circuit`, docs/turn.md): when a client's ChannelData or
/// Send goes to the relayed address of another allocation of this ferryd (both peers fell back
/// to this region's relay, the common case), it is handed to that allocation's client: from this
/// batch when the allocation is on this worker, else in a batch handed to its worker
/// (`TURNHandoff`). The kernel path costs a send on one relayed socket, the kernel's loopback, a
/// read on the other and a send; this costs the send to the client alone (and across workers a
/// copy into the batch).
///
/// What the datagram is checked against does not change. The sender's side is checked by
/// `channelTarget` and `sendIndication`: its channel or permission, and its bandwidth. The
/// receiver's side is checked by `peerRoute`: its permission for the sender's relayed address,
/// and its bandwidth. The receiver sees the sender's relayed address as the peer, as it would
/// over the network.
///
/// On this worker, some datagrams take the kernel's path as before: receivers over TCP or TLS,
/// and ChannelData for a receiver with no channel back (a Data indication needs more room in
/// front of the payload than ChannelData leaves). Handed to another worker, every receiver is
/// served there (the record has the room), as a datagram read on its relayed socket would be.
extension TURNService {
    struct ShortCircuitBatch {
        var packets: UInt64 = 0
        var bytes: UInt64 = 0
        /// Listener sockets (by index, the first 64) with datagrams queued.
        var touched: UInt64 = 0
    }

    /// Delivers the `length` bytes at `payload`, sent from relay `from` to `peer`, when `peer` is
    /// an allocation of this worker; false: the caller sends it the usual way. `headroom`: bytes
    /// in front of the payload that are the sender's header and may be overwritten.
    @inline(__always)
    func deliver(from: RelayID, to peer: SocketAddress, _ payload: UnsafeMutableRawPointer, _ length: Int, headroom: Int,
                 now: UInt64, _ batch: inout ShortCircuitBatch) -> Bool {
        // Values from the relay table's slab: no socket object is touched per packet.
        guard let dest = localRelays[peer] else { return handOff(from: from, to: peer, payload, length) }
        guard let receiver = relays.entry(dest), let sender = relays.entry(from) else { return false }
        let source = sender.local
        let needsChannel = headroom < DataIndicationWriter.headroom - (source.ip.isIPv4 ? 12 : 0)
        guard server.takesShortCircuit(slot: receiver.allocation, generation: receiver.allocationGeneration, from: source,
                                       needsChannel: needsChannel, now: now) else { return false }
        switch server.peerRoute(slot: receiver.allocation, generation: receiver.allocationGeneration, peer: source, length: length, now: now) {
        case .drop:
            return true  // counted there, as the datagram would have been on arrival
        case .channel(let number, let client, .udp(let listener)):
            let start = payload - ChannelData.headerLength
            ChannelData.writeHeader(channel: number, length: length, at: start)
            queue(UnsafeRawPointer(start), ChannelData.headerLength + length, to: client, listener: Int(listener), &batch)
        case .indication(let client, .udp(let listener)):
            // A Send indication's payload is padded inside its own message: the padding is there.
            let start = dataIndications.write(before: payload, length: length, peer: source)
            queue(UnsafeRawPointer(start), start.distance(to: payload) + (length + 3) & ~3, to: client, listener: Int(listener), &batch)
        case .channel(_, _, .stream), .indication(_, .stream):
            return true  // not offered: takesShortCircuit answers no for stream clients
        }
        batch.packets += 1
        batch.bytes += UInt64(length)
        return true
    }

    @inline(__always)
    private func queue(_ start: UnsafeRawPointer, _ count: Int, to client: SocketAddress, listener: Int, _ batch: inout ShortCircuitBatch) {
        let socket = worker.datagramSockets[listener]
        if socket.toClient.isFull { flushClient(socket) }
        socket.toClient.append(start, count, to: client)
        batch.touched |= 1 << UInt64(listener & 63)
    }

    /// A datagram for a live relayed port of another worker's block, written into the batch for
    /// that worker; false (the kernel's path) when it is this worker's, not a live allocation's,
    /// or when `turn.short_circuit_handoff_bytes` are in flight to that worker (counted).
    @inline(__always)
    private func handOff(from: RelayID, to peer: SocketAddress, _ payload: UnsafeRawPointer, _ length: Int) -> Bool {
        // A port a live allocation holds (one relaxed load): another program's socket on the
        // relay's address, even in the relayed range, is reached through the kernel.
        guard let hub = handoff, hub.ports.contains(Int(peer.port)), server.relayPorts.contains(peer) else { return false }
        let w = hub.worker(forPort: peer.port)
        guard w != loop.index, let sender = relays.entry(from) else { return false }
        let pending = outboxes[w]?.used ?? 0
        guard hub.inFlight[w].bytes.load(ordering: .relaxed) + pending + TURNHandoffBatch.size(length) <= hub.budget else {
            server.countShortCircuitHandoffFull()
            return false
        }
        if outboxes[w] == nil { outboxes[w] = TURNHandoffBatch(capacity: outboxStart, limit: outboxCapacity) }
        return outboxes[w]!.append(to: peer, from: sender.local, payload, length)
    }

    /// The end of a batch: each worker's records leave in one post.
    private func postHandoffs() {
        guard let hub = handoff else { return }
        for w in outboxes.indices {
            guard let batch = outboxes[w] else { continue }
            outboxes[w] = nil
            hub.inFlight[w].bytes.add(batch.used, ordering: .relaxed)
            hub.services[w].loop.execute { [hub] l in
                hub.inFlight[l.index].bytes.subtract(batch.used, ordering: .relaxed)
                hub.services[l.index].receiveHandoff(batch, now: l.now)
            }
        }
    }

    /// Records another worker handed over: each delivered to its allocation's client as if read
    /// on the allocation's relayed socket (its permission and bandwidth checked here); a
    /// relayed address with no allocation now is dropped and counted, as the kernel would.
    func receiveHandoff(_ batch: TURNHandoffBatch, now: UInt64) {
        let sockets = worker.datagramSockets
        var packets: UInt64 = 0, bytes: UInt64 = 0, touched: UInt64 = 0
        batch.forEach { receiver, sender, data, length in
            guard let id = localRelays[receiver], let r = relays.entry(id) else {
                server.countDrop(.noAllocation)
                return
            }
            guard toClient(slot: r.allocation, generation: r.allocationGeneration, from: sender, data, length, now: now,
                           sockets: sockets, touched: &touched) else { return }
            packets += 1
            bytes += UInt64(length)
        }
        // Counted before they leave: whoever sees one arrive sees it counted.
        if packets > 0 {
            server.countRelayed(toPeer: false, packets: packets, bytes: bytes)
            server.countShortCircuited(packets)
        }
        flushClients(touched)
    }

    /// After the batch: what was queued for clients leaves, and is counted; records for other
    /// workers are posted.
    func finish(_ batch: ShortCircuitBatch) {
        postHandoffs()
        guard batch.packets > 0 else { return }
        // Counted before they leave: whoever sees one arrive sees it counted.
        server.countRelayed(toPeer: false, packets: batch.packets, bytes: batch.bytes)
        server.countShortCircuited(batch.packets)
        flushClients(batch.touched)
    }
}
