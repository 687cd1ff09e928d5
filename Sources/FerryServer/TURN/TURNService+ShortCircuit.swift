import FerryCore
import FerryTURN
import FerryWire

/// TURN to TURN inside ferryd (`turn.short_circuit`, docs/turn.md): when a client's ChannelData or
/// Send goes to the relayed address of another allocation on this worker (both peers fell back
/// to this region's relay, the common case), it is handed to that allocation's client from this
/// batch. The kernel path costs a send on one relayed socket, the kernel's loopback, a read on
/// the other and a send; this costs the send to the client alone.
///
/// What the datagram is checked against does not change. The sender's side is checked by
/// `channelTarget` and `sendIndication`: its channel or permission, and its bandwidth. The
/// receiver's side is checked by `peerRoute`: its permission for the sender's relayed address,
/// and its bandwidth. The receiver sees the sender's relayed address as the peer, as it would
/// over the network.
///
/// Some datagrams take the kernel's path as before:
/// - allocations on another worker (each worker relays from its own block of ports);
/// - receivers over TCP or TLS;
/// - ChannelData for a receiver with no channel back (a Data indication needs more room in front
///   of the payload than ChannelData leaves).
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
        guard let dest = localRelays[peer], let receiver = relays.entry(dest), let sender = relays.entry(from) else { return false }
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

    /// After the batch: what was queued for clients leaves, and is counted.
    func finish(_ batch: ShortCircuitBatch) {
        guard batch.packets > 0 else { return }
        var touched = batch.touched, i = 0
        while touched != 0 {
            if touched & 1 != 0 { flushClient(worker.datagramSockets[i]) }
            touched >>= 1
            i += 1
        }
        server.countRelayed(toPeer: false, packets: batch.packets, bytes: batch.bytes)
        server.countShortCircuited(batch.packets)
    }
}
