import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import FerryTLS
import FerryWire
#if canImport(Glibc)
import Glibc
#endif


/// ferry tunnel's packets: from the ICE socket, the relay and WireGuard's proxy sockets.
extension Tunnel {
    // MARK: Packets

    public func handleEvent(_ events: UInt32, loop: EventLoop) { readICE() }

    /// The ICE socket: TURN from the relay server, checks and data from peers.
    func readICE() {
        let relayServer = relay.udpServer
        while true {
            guard case .done(let n)? = try? batch.receive(from: ice.raw), n > 0 else { return }
            for j in 0..<n {
                guard let from = batch.source(j) else { continue }
                let p = UnsafeMutableRawBufferPointer(start: batch.data(j), count: batch.length(j))
                if from == relayServer {
                    fromRelayServer(p)
                } else if relay.isRanking && rankingAnswer(p, from: from) {
                    continue
                } else {
                    fromPeer(p, from: from, via: .direct)
                }
            }
            flush()
            if n < batch.capacity { return }
        }
    }

    /// Bytes from the TURN server (a datagram, or one frame of the stream).
    func fromRelayServer(_ p: UnsafeMutableRawBufferPointer) {
        guard p.count >= 4 else { return }
        if ChannelData.isChannelData(firstByte: p[0]) {
            guard let (channel, length) = ChannelData.parse(UnsafeRawBufferPointer(p)), let peer = relay.peer(forChannel: channel) else { return }
            fromPeer(UnsafeMutableRawBufferPointer(rebasing: p[4..<(4 + length)]), from: peer, via: .relayed)
            return
        }
        guard case .success(let m) = STUNMessage.parse(UnsafeRawBufferPointer(p)) else { return }
        if m.method == STUN.Method.data && m.messageClass == .indication {
            guard let peer = m.xorAddress(STUN.Attribute.xorPeerAddress), let data = m.attribute(STUN.Attribute.data) else { return }
            fromPeer(UnsafeMutableRawBufferPointer(mutating: data), from: peer, via: .relayed)
            return
        }
        performRelay(relay.receive(m, now: loop.now))
    }

    /// A datagram from a peer (directly, or unwrapped from the relay): an ICE check if it is
    /// STUN with a FINGERPRINT, else a WireGuard packet for the link whose path it came on.
    func fromPeer(_ p: UnsafeMutableRawBufferPointer, from: SocketAddress, via: ICEVia) {
        let raw = UnsafeRawBufferPointer(p)
        if STUNMessage.looksLikeSTUN(raw), case .success(let m) = STUNMessage.parse(raw), m.fingerprintOffset >= 0 {
            check(m, from: from, via: via)
            return
        }
        guard let i = byRemote[from] ?? linkKnowing(from) else { return }
        // WireGuard talks to the peer through the native relay now: a packet the peer's side sent
        // the old way would make WireGuard roam back to the agent (and it reaches WireGuard anyway
        // by the relay once both ends are bound).
        if links[i].native?.isBound == true {
            links[i].dropped &+= 1
            return
        }
        links[i].rxPackets &+= 1
        links[i].rxBytes &+= UInt64(p.count)
        if links[i].out.isFull { flushLink(i) }
        links[i].out.append(p.baseAddress!, p.count, to: links[i].deliverTo)
        links[i].sentToWireGuard = true
    }

    func linkKnowing(_ address: SocketAddress) -> Int? {
        links.indices.first { links[$0].ice?.remotes.contains { $0.address == address } ?? false }
    }

    func check(_ m: STUNMessage, from: SocketAddress, via: ICEVia) {
        guard m.method == STUN.Method.binding else { return }
        let i: Int?
        if m.messageClass == .request {
            i = links.indices.first { links[$0].ice?.owns(m) ?? false }
        } else {
            i = links.indices.first { links[$0].ice?.awaits(m.transactionID) ?? false }
        }
        guard let i, var agent = links[i].ice else { return }
        let (sends, events) = agent.receive(m, from: from, via: via, now: loop.now)
        links[i].ice = agent
        for s in sends { sendICE(s) }
        iceEvents(events, link: i)
    }

    /// WireGuard's packets for link `i`: out on its path.
    func readProxy(_ i: Int) {
        while true {
            guard case .done(let n)? = try? batch.receive(from: links[i].proxy.raw), n > 0 else { return }
            for j in 0..<n {
                let length = batch.length(j)
                if let s = links[i].nativeStream, s.binding.isBound {
                    sendNativeStream(s, batch.data(j), length, link: i)
                    continue
                }
                guard let route = links[i].route else {
                    // No path yet: held briefly for the selection ICE is confirming (HeldPackets).
                    if links[i].ice != nil { links[i].held.hold(batch.data(j), length, now: loop.now) } else { links[i].dropped &+= 1 }
                    continue
                }
                send(batch.data(j), length, on: route, link: i)
            }
            iceOut.flush(ice.raw)
            if n < batch.capacity { return }
        }
    }

    /// One of WireGuard's packets out on link `i`'s path (`data` has ChannelData headroom).
    func send(_ data: UnsafeMutableRawPointer, _ length: Int, on route: ICERoute, link i: Int) {
        links[i].txPackets &+= 1
        links[i].txBytes &+= UInt64(length)
        if iceOut.isFull { iceOut.flush(ice.raw) }
        switch route.via {
        case .direct:
            iceOut.append(data, length, to: route.remote)
        case .relayed:
            forwardRelayed(data, length, to: route.remote, link: i)
        }
    }

    /// What waited for link `i`'s first path leaves on it.
    func sendHeld(_ i: Int, on route: ICERoute) {
        var held = links[i].held
        held.drain(now: loop.now) { data, length in send(data, length, on: route, link: i) }
        links[i].held = held
        iceOut.flush(ice.raw)
    }

    func forwardRelayed(_ data: UnsafeMutableRawPointer, _ length: Int, to peer: SocketAddress, link i: Int) {
        guard let channel = relay.channel(for: peer) else {
            // Until the channel is bound: a Send indication (allocates; a few packets at most).
            if let f = relay.frame(Array(UnsafeRawBufferPointer(start: data, count: length)), to: peer) { sendTURN(f) }
            return
        }
        switch relay.transport {
        case .udp(let server):
            // The ChannelData header goes into the slot's headroom: no copy.
            let start = data - ChannelData.headerLength
            ChannelData.writeHeader(channel: channel, length: length, at: start)
            iceOut.append(start, length + ChannelData.headerLength, to: server)
        case .stream:
            guard let c = relayStream else { return }
            let padded = (length + 3) & ~3
            streamFrame.withUnsafeMutableBytes { f in
                ChannelData.writeHeader(channel: channel, length: length, at: f.baseAddress!)
                (f.baseAddress! + 4).copyMemory(from: data, byteCount: length)
                for k in length..<padded { f[4 + k] = 0 }
                c.write(UnsafeRawBufferPointer(rebasing: f[0..<(4 + padded)]))
            }
        case .none:
            links[i].dropped &+= 1
        }
    }

    /// Bytes on the TURN stream (TCP or TLS): framed, then as datagrams from the server.
    func readStream() {
        guard let c = relayStream, relay.isStream else { return }
        // Every return sends what is queued while the bytes it points to are still in place.
        defer { flush() }
        while let n = c.read(into: streamReader.freeSpace) {
            if n == 0 {
                log("relay: \(relay.transportDescription) closed by the server; gathering again")
                startGathering()
                return
            }
            streamReader.didRead(n)
            let outcome = streamReader.frames { frame in
                switch frame {
                case .stun(let m): fromRelayServer(m)
                // The header is just before the payload, in place: the frame as it came.
                case .channelData(_, let payload): fromRelayServer(UnsafeMutableRawBufferPointer(start: payload.baseAddress! - 4, count: payload.count + 4))
                }
            }
            // What was queued for WireGuard points into the reader's buffer: sent before the
            // partial frame left over moves to the front over it.
            flush()
            guard outcome == .more else {
                log("relay: \(outcome == .invalid ? "unframeable bytes" : "a frame larger than the buffer") on \(relay.transportDescription); reconnecting")
                startGathering()
                return
            }
            streamReader.compact()
        }
    }

    func flushLink(_ i: Int) {
        links[i].out.flush(links[i].proxy.raw)
        links[i].sentToWireGuard = false
    }

    func flush() {
        if iceOut.count > 0 { iceOut.flush(ice.raw) }
        for i in links.indices where links[i].sentToWireGuard { flushLink(i) }
    }
}
