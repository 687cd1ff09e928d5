#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import CFerryLinux
import FerrySystem
import FerryWire
import FerryTURN


/// TURN's data plane on one worker (RFC 8656): a datagram service for STUN and ChannelData on
/// the worker's UDP listener sockets, the frame handler for TURN over TCP and TLS, and the
/// relayed sockets of the allocations that live here (it is their `RelayProvider`). Protocol
/// decisions are `TURNServer`'s; this class only moves bytes.
///
/// Hot path, hand-written: a client's ChannelData is read in a `recvmmsg` batch and sent on
/// from the same buffer (offset 4) with `sendmmsg`; a peer's datagram is read into a slot with
/// headroom, and the ChannelData or Data-indication header is written in front of it in place.
/// Per packet: one client lookup (hash) or one relay-slot index, a scan of a few permission or
/// channel slots, no allocation, lock, atomic read-modify-write or dynamic dispatch.
///
/// Ownership: everything here belongs to the worker's loop thread; static after set-up except
/// the relay table, the send queues and the GSO train.
final class TURNService: RelayProvider, DatagramService, StreamFrameHandler {
    /// The worker and its loop outlive the service: the engine's loops live until the process
    /// ends, and the service is dropped with its worker after the loops have stopped.
    unowned let worker: Worker
    unowned let loop: EventLoop
    private(set) var server: TURNServer!
    /// Peer-side reads, with room for a Data-indication header in front and padding behind.
    private let peerBatch: UDPReceiveBatch
    /// Client → peer sends, flushed whenever the relay socket changes and after each batch.
    private let toPeer4: UDPSendQueue
    private let toPeer6: UDPSendQueue
    var toPeerFD: Int32 = -1
    /// UDP GSO for client → peer: consecutive equal-size datagrams from one relay to one peer
    /// (a bulk WireGuard flow) are copied into one contiguous run and sent as a single
    /// `UDP_SEGMENT` train; the kernel splits it after routing, once instead of per datagram.
    /// The first datagram of a run is not copied until a second joins it.
    private let gso: Bool
    private let arena: UnsafeMutableRawPointer
    private let arenaCapacity: Int
    private var arenaUsed = 0
    /// Where stream-carried payloads are copied before they are queued (`queueStaged`); the
    /// same size as the arena, emptied by the same flush. GSO trains still form from it.
    private let staging: UnsafeMutableRawPointer
    private var stagedUsed = 0
    var train = Train()
    struct Train {
        var count = 0
        var handle: Int32 = -1
        var peer = SocketAddress(ip: .ipv4Any, port: 0)
        var segment = 0
        var first: UnsafeRawPointer?
        var start: UnsafeMutableRawPointer?
    }
    /// The kernel's UDP_MAX_SEGMENTS, and a train's byte limit (an IP datagram's payload).
    static let maxSegments = 64
    static let maxTrainBytes = 65000
    /// Replies to STUN requests in one batch, one 1500-byte slot each.
    private let replies: UnsafeMutableRawPointer
    private static let replySlot = 1500
    var relays = RelayTable()
    /// This worker's relayed sockets by local address: TURN to TURN (TURNService+ShortCircuit).
    var localRelays: [SocketAddress: RelayID] = [:]
    /// Across workers (TURNHandoff): the hub, and this batch's records for each worker.
    var handoff: TURNHandoffHub?
    var outboxes: [TURNHandoffBatch?] = []
    let outboxStart: Int, outboxCapacity: Int
    var ports: RelayPorts
    let metrics: CounterBlock
    private let batchSize: Int
    var dataIndications = DataIndicationWriter()
    /// The XDP fast path (TURNService+FastPath), when engine.xdp is on and attached.
    var fastPath: ChannelFastPathState?

    /// Where a Data indication's header starts before the payload (see `DataIndicationWriter`).
    static let headroom = DataIndicationWriter.headroom

    private let batchHistograms: (client: HistogramID, peer: HistogramID)

    /// `ferry_turn_batch_size`: datagrams per `recvmmsg`, client and peer side (registered once,
    /// shared by every worker's service).
    static func batchHistograms(registering registry: some CounterRegistry) -> (client: HistogramID, peer: HistogramID) {
        let help = "Datagrams per recvmmsg on TURN sockets, by side."
        let bounds: [UInt64] = [1, 2, 4, 8, 16, 32, 64, 128, 256]
        return (registry.histogram("ferry_turn_batch_size", help, bounds: bounds, labels: [("side", "client")]),
                registry.histogram("ferry_turn_batch_size", help, bounds: bounds, labels: [("side", "peer")]))
    }

    /// Relayed sockets: never SO_REUSEPORT (each port belongs to one allocation); buffers from
    /// `turn.relay_buffer_bytes` (one per allocation, so smaller than the listeners').

    init(worker: Worker, maxDatagram: Int, portRange: ClosedRange<Int>,
         batchHistograms: (client: HistogramID, peer: HistogramID), gso: Bool, relayBuffer: Int) {
        self.worker = worker
        loop = worker.loop
        metrics = worker.metrics
        batchSize = worker.batchSize
        ports = RelayPorts(range: portRange, options: Sockets.UDPOptions(reusePort: false, receiveBuffer: relayBuffer, sendBuffer: relayBuffer))
        self.gso = gso
        arenaCapacity = batchSize * maxDatagram
        outboxCapacity = batchSize * TURNHandoffBatch.size(maxDatagram)
        outboxStart = 8 * TURNHandoffBatch.size(maxDatagram)
        arena = .allocate(byteCount: arenaCapacity, alignment: 64)
        staging = .allocate(byteCount: arenaCapacity, alignment: 64)
        self.batchHistograms = batchHistograms
        peerBatch = UDPReceiveBatch(capacity: batchSize, slotSize: TURNService.headroom + maxDatagram + 4,
                                    headroom: TURNService.headroom, tailroom: 4)
        toPeer4 = UDPSendQueue(capacity: batchSize, ipv6Socket: false)
        toPeer6 = UDPSendQueue(capacity: batchSize, ipv6Socket: true)
        replies = .allocate(byteCount: batchSize * TURNService.replySlot, alignment: 8)
        worker.onStop { [unowned self] in
            self.server?.closeAll(now: self.loop.now)
            self.handoff = nil  // the hub holds every service: the cycle ends here
        }
    }

    deinit {
        replies.deallocate()
        arena.deallocate()
        staging.deallocate()
        relays.release()
    }

    func attach(_ server: TURNServer, sessionLog: SessionLog) {
        self.server = server
        guard sessionLog.enabled else { return }
        server.onEnd = { [unowned self] record, reason in
            sessionLog.allocationEnded(record, reason, transport: transportName(record.transport))
        }
    }

    /// udp, tcp or tls: how a client reaches its allocation.
    func transportName(_ t: ClientTransport) -> String {
        switch t {
        case .udp: return "udp"
        case .stream(let id):
            return worker.connection(id)?.isTLS == true ? "tls" : "tcp"
        }
    }

    /// The first bytes TURN claims on a UDP socket (RFC 7983); it is also the socket's fallback,
    /// so anything else that arrives is counted as a malformed TURN message.
    static let datagramRanges = [DatagramDemux.Range.stun, DatagramDemux.Range.channelData]

    // MARK: Client side

    func receive(_ batch: UDPReceiveBatch, count n: Int, routes: UnsafePointer<DatagramDemux.Route>,
                 route: DatagramDemux.Route, socket: DatagramSocket, now: UInt64) {
        let index = socket.index
        let toClient = socket.toClient
        var wallNow: UInt64 = 0
        batchHistograms.client.observe(UInt64(n), in: metrics)
        var relayedPackets: UInt64 = 0
        var relayedBytes: UInt64 = 0
        var shortCircuit = ShortCircuitBatch()
        for i in 0..<n where routes[i] == route {
            let data = batch.data(i)
            let length = batch.length(i)
            guard length >= 4, let source = batch.source(i) else {
                server.countDrop(.malformed)
                continue
            }
            let first = data.load(as: UInt8.self)
            if ChannelData.isChannelData(firstByte: first) {
                // RFC 8656 §12.4: over UDP the length may be followed by padding; anything
                // shorter than it says is malformed.
                let bytes = UnsafeRawBufferPointer(start: data, count: length)
                guard let (channel, payload) = ChannelData.parse(bytes) else {
                    server.countDrop(.malformed)
                    continue
                }
                guard let target = server.channelTarget(client: ClientKey(address: source, transport: .udp(listener: index)),
                                                        channel: channel, length: payload, now: now) else { continue }
                if server.mayShortCircuit(to: target.peer),
                   deliver(from: target.relay, to: target.peer, data + 4, payload, headroom: ChannelData.headerLength, now: now, &shortCircuit) {
                    relayedPackets += 1
                    relayedBytes += UInt64(payload)
                    continue
                }
                queueToPeer(target.relay, peer: target.peer, data + 4, payload)
                relayedPackets += 1
                relayedBytes += UInt64(payload)
                continue
            }
            // Otherwise it must be STUN (RFC 7983 demultiplexing); anything else is dropped.
            let bytes = UnsafeRawBufferPointer(start: data, count: length)
            guard case .success(let msg) = STUNMessage.parse(bytes) else {
                server.countDrop(.malformed)
                continue
            }
            if wallNow == 0 { wallNow = wallClockSeconds() }
            let out = UnsafeMutableRawBufferPointer(start: replies + i * TURNService.replySlot, count: TURNService.replySlot)
            switch server.handle(msg, from: ClientKey(address: source, transport: .udp(listener: index)),
                                 now: now, wallNow: wallNow, out: out) {
            case .none:
                break
            case .reply(let len):
                if toClient.isFull { flushClient(socket) }
                toClient.append(out.baseAddress!, len, to: source)
            case .relay(let relay, let peer, let payload):
                // A Send indication's header and XOR-PEER-ADDRESS leave room for a Data indication's.
                let room = payload.baseAddress! - UnsafeRawPointer(data)
                if server.mayShortCircuit(to: peer),
                   deliver(from: relay, to: peer, UnsafeMutableRawPointer(mutating: payload.baseAddress!), payload.count, headroom: room, now: now, &shortCircuit) {
                    continue
                }
                queueToPeer(relay, peer: peer, payload.baseAddress!, payload.count)
            }
        }
        flushPeer()
        finish(shortCircuit)
        flushClient(socket)
        if relayedPackets > 0 { server.countRelayed(toPeer: true, packets: relayedPackets, bytes: relayedBytes) }
        syncFastPath()
    }

    /// Queues one datagram for a relayed socket, extending the current GSO train when it can.
    /// `bytes` must stay valid until the flush at the end of the batch: it points into the
    /// worker's receive batch (the UDP paths, flushed before `receive` returns) or this service's
    /// arena (`queueStaged`); nothing else is queued.
    @inline(__always)
    private func queueToPeer(_ relay: RelayID, peer: SocketAddress, _ bytes: UnsafeRawPointer, _ length: Int) {
        let handle = relays.fd(relay)
        guard handle >= 0 else {
            server.countDrop(.noAllocation)
            return
        }
        if gso && train.count > 0 && joinsTrain(handle, peer, length) {
            if train.start == nil {
                // The second datagram: move the first into the arena too.
                guard arenaUsed + TURNService.maxTrainBytes <= arenaCapacity else {
                    closeTrain()
                    startTrain(handle, peer, bytes, length)
                    return
                }
                let start = arena + arenaUsed
                start.copyMemory(from: train.first!, byteCount: length)
                train.start = start
            }
            (train.start! + train.count * length).copyMemory(from: bytes, byteCount: length)
            train.count += 1
            return
        }
        closeTrain()
        startTrain(handle, peer, bytes, length)
    }

    /// Whether a datagram for `handle` and `peer` of `length` bytes extends the open train.
    @inline(__always)
    private func joinsTrain(_ handle: Int32, _ peer: SocketAddress, _ length: Int) -> Bool {
        handle == train.handle && length == train.segment && peer == train.peer
            && train.count < TURNService.maxSegments && (train.count + 1) * length <= TURNService.maxTrainBytes
    }

    @inline(__always)
    private func startTrain(_ handle: Int32, _ peer: SocketAddress, _ bytes: UnsafeRawPointer, _ length: Int) {
        train = Train(count: 1, handle: handle, peer: peer, segment: length, first: bytes, start: nil)
    }

    /// Hands the current train to the send queue: one datagram, or one GSO send. sendmmsg takes
    /// one socket, so a change of relay flushes what is queued; one client's packets share one.
    private func closeTrain() {
        guard train.count > 0 else { return }
        let handle = train.handle
        if handle != toPeerFD || toPeer4.isFull || toPeer6.isFull {
            flushQueued()
            toPeerFD = handle
        }
        let q = train.peer.ip.isIPv4 ? toPeer4 : toPeer6
        if let start = train.start {
            q.append(start, train.count * train.segment, to: train.peer, segment: UInt16(train.segment))
            arenaUsed += train.count * train.segment
        } else {
            q.append(train.first!, train.segment, to: train.peer)
        }
        train.count = 0
    }

    func flushPeer() {
        closeTrain()
        flushQueued()
        arenaUsed = 0
        stagedUsed = 0
    }

    private func flushQueued() {
        guard toPeerFD >= 0 else { return }
        // Two ifs, not a loop over `[toPeer4, toPeer6]`: that array literal was a heap
        // allocation per flush, so per packet at low rates (found by test_allocations.py).
        if toPeer4.count > 0 { account(toPeer4.flush(toPeerFD)) }
        if toPeer6.count > 0 { account(toPeer6.flush(toPeerFD)) }
        toPeerFD = -1
    }

    /// Sends what is queued for clients on `socket`; counted on the listener and, for drops, on
    /// the relay.
    /// Flushes the listener sockets marked in `touched` (bit i: socket i, the first 64).
    func flushClients(_ touched: UInt64) {
        var touched = touched, i = 0
        while touched != 0 {
            if touched & 1 != 0 { flushClient(worker.datagramSockets[i]) }
            touched >>= 1
            i += 1
        }
    }

    func flushClient(_ socket: DatagramSocket) {
        if let r = socket.flush(metrics: metrics) { account(r) }
    }

    private func account(_ r: UDPSendQueue.FlushResult) {
        if r.bufferFull > 0 { server.countDrop(.bufferFull, UInt64(r.bufferFull)) }
        if r.failed > 0 { server.countDrop(.sendError, UInt64(r.failed)) }
    }

    // MARK: Peer side

    func relayReadable(_ relay: RelaySocket) {
        let fd = relay.fd.raw
        let sockets = worker.datagramSockets
        let now = loop.now
        // A read error here is an ICMP error (ECONNREFUSED) for an earlier send: counted, no data.
        let last = BatchReader.drain(peerBatch, fd: fd, onError: { server.countDrop(.sendError) }) { n in
            batchHistograms.peer.observe(UInt64(n), in: metrics)
            var packets: UInt64 = 0
            var bytes: UInt64 = 0
            var touched: UInt64 = 0
            for i in 0..<n {
                let data = peerBatch.data(i)
                let length = peerBatch.length(i)
                // A Data indication adds up to 48 bytes and padding; its length field is 16 bits.
                guard !peerBatch.truncated(i), length <= 65535 - TURNService.headroom - 4, let peer = peerBatch.source(i) else {
                    server.countDrop(.malformed)
                    continue
                }
                guard toClient(slot: relay.slot, generation: relay.generation, from: peer, data, length, now: now,
                               sockets: sockets, touched: &touched) else { continue }
                packets += 1
                bytes += UInt64(length)
            }
            flushClients(touched)
            if packets > 0 { server.countRelayed(toPeer: false, packets: packets, bytes: bytes) }
        }
        if let last { relay.hot.settle(received: last, capacity: batchSize, fd: fd, registration: relay.registration, loop: loop) }
    }

    /// A datagram from `peer` to the allocation in `slot` (read on its relayed socket, or handed
    /// over from another worker's allocation), queued for the allocation's client as ChannelData
    /// or a Data indication written in place in front of `data` (which has
    /// `TURNService.headroom` bytes before it and its padding after); false when the permission,
    /// the bandwidth or the client's queue refused it (counted there). UDP clients' sockets
    /// with datagrams queued are marked in `touched` for the caller to flush.
    @inline(__always)
    func toClient(slot: Int32, generation: UInt32, from peer: SocketAddress, _ data: UnsafeMutableRawPointer, _ length: Int,
                  now: UInt64, sockets: [DatagramSocket], touched: inout UInt64) -> Bool {
        switch server.peerRoute(slot: slot, generation: generation, peer: peer, length: length, now: now) {
        case .drop:
            return false
        case .channel(let number, _, .stream(let id)):
            // Over a stream, ChannelData is padded to 4 bytes (RFC 8656 §12.5).
            let start = data - ChannelData.headerLength
            ChannelData.writeHeader(channel: number, length: length, at: start)
            let padded = (length + 3) & ~3
            for i in length..<padded { (data + i).storeBytes(of: UInt8(0), as: UInt8.self) }
            return toStream(id, UnsafeRawBufferPointer(start: start, count: ChannelData.headerLength + padded))
        case .indication(_, .stream(let id)):
            let start = dataIndications.write(before: data, length: length, peer: peer)
            let total = start.distance(to: data) + (length + 3) & ~3
            return toStream(id, UnsafeRawBufferPointer(start: start, count: total))
        case .channel(let number, let client, .udp(let listener)):
            let start = data - ChannelData.headerLength
            ChannelData.writeHeader(channel: number, length: length, at: start)
            let socket = sockets[Int(listener)]
            if socket.toClient.isFull { flushClient(socket) }
            socket.toClient.append(start, length + ChannelData.headerLength, to: client)
            touched |= 1 << UInt64(listener & 63)
        case .indication(let client, .udp(let listener)):
            let start = dataIndications.write(before: data, length: length, peer: peer)
            let total = start.distance(to: data) + (length + 3) & ~3
            let socket = sockets[Int(listener)]
            if socket.toClient.isFull { flushClient(socket) }
            socket.toClient.append(UnsafeRawPointer(start), total, to: client)
            touched |= 1 << UInt64(listener & 63)
        }
        return true
    }

    /// Queues a relayed message for a stream client; false (and counted) when its queue is full.
    func toStream(_ id: ConnectionID, _ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let conn = worker.connection(id) else {
            server.countDrop(.noAllocation)
            return false
        }
        guard conn.enqueue(bytes, droppable: true) else {
            server.countDrop(.bufferFull)
            return false
        }
        return true
    }

    // MARK: TURN over TCP and TLS

    /// Frames TURN messages (RFC 8656 §10.1, §12.5: STUN, and ChannelData padded to 4) at the
    /// front of a connection's input and handles them; relayed payloads are sent before this
    /// returns, while `input` is still theirs.
    func consume(_ input: UnsafeRawBufferPointer, from conn: StreamConnection) -> Int? {
        var consumed = 0
        defer {
            flushPeer()
            syncFastPath()
        }
        while consumed < input.count && !conn.closed {
            let rest = UnsafeRawBufferPointer(rebasing: input[consumed...])
            switch StreamFraming.next(rest, maxFrame: StreamConnection.maxFrame) {
            case .incomplete:
                return consumed
            case .invalid:
                server.countDrop(.malformed)
                return nil
            case .stun(let length):
                handleStreamSTUN(UnsafeRawBufferPointer(rebasing: rest[0..<length]), from: conn)
                consumed += length
            case .channelData(let channel, let payload, let frame):
                handleStreamChannelData(channel: channel, payload: rest.baseAddress! + 4, length: payload, from: conn)
                consumed += frame
            }
        }
        return consumed
    }

    func connectionClosed(_ conn: StreamConnection) {
        server.clientGone(ClientKey(address: conn.peer, transport: .stream(conn.id)), now: loop.now)
        syncFastPath()
    }

    private func handleStreamSTUN(_ bytes: UnsafeRawBufferPointer, from conn: StreamConnection) {
        guard case .success(let msg) = STUNMessage.parse(bytes) else {
            server.countDrop(.malformed)
            return
        }
        let out = UnsafeMutableRawBufferPointer(start: replies, count: TURNService.replySlot)
        switch server.handle(msg, from: ClientKey(address: conn.peer, transport: .stream(conn.id)),
                             now: loop.now, wallNow: wallClockSeconds(), out: out) {
        case .none:
            break
        case .reply(let len):
            conn.enqueue(UnsafeRawBufferPointer(start: out.baseAddress, count: len), droppable: false)
        case .relay(let relay, let peer, let payload):
            queueStaged(relay, peer: peer, payload.baseAddress!, payload.count)
        }
    }

    private func handleStreamChannelData(channel: UInt16, payload: UnsafeRawPointer, length: Int, from conn: StreamConnection) {
        guard let target = server.channelTarget(client: ClientKey(address: conn.peer, transport: .stream(conn.id)),
                                                channel: channel, length: length, now: loop.now) else { return }
        queueStaged(target.relay, peer: target.peer, payload, length)
        server.countRelayed(toPeer: true, packets: 1, bytes: UInt64(length))
    }

    /// Queues bytes that belong to someone else (a stream connection's input buffer) by copying
    /// them into this service's arena first, so the send queue only ever points at memory the
    /// service or the worker's receive batch owns until the flush: nothing a caller frees or
    /// compacts can be sent afterwards. One copy per stream-carried packet; the UDP paths queue
    /// from the batch without copying.
    private func queueStaged(_ relay: RelayID, peer: SocketAddress, _ bytes: UnsafeRawPointer, _ length: Int) {
        // Joining a GSO train already copied into the arena copies it there now: no staging.
        if train.start != nil && joinsTrain(relays.fd(relay), peer, length) {
            queueToPeer(relay, peer: peer, bytes, length)
            return
        }
        if stagedUsed + length > arenaCapacity { flushPeer() }
        guard length <= arenaCapacity else {
            // Larger than the whole staging area (a 64 KiB stream frame): sent before this returns.
            queueToPeer(relay, peer: peer, bytes, length)
            flushPeer()
            return
        }
        let staged = staging + stagedUsed
        staged.copyMemory(from: bytes, byteCount: length)
        stagedUsed += length
        queueToPeer(relay, peer: peer, staged, length)
    }

    var relayCount: Int { relays.count }
}
