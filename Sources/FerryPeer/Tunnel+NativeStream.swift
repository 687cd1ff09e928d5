import FerryClient
import FerryCore
import FerrySystem
import FerryWire

/// A link's native-relay end over the relay's stream side (`wgrelays:`, docs/relay-protocol.md),
/// for an agent whose UDP does not reach the relay (a network that lets only HTTPS out). The
/// partner's WireGuard talks to the relay's UDP port as usual; this side's WireGuard keeps the
/// agent's local endpoint and the agent carries its packets over TLS, as on its TURN-over-TLS
/// path: WireGuard's packets from the link's proxy socket go out as ChannelData on channel
/// 0x4000, and what the relay sends back is handed to WireGuard from that socket. One stream per
/// link, so what comes back needs no demultiplexing.
final class NativeStream {
    let connection: ClientConnection
    var binding: NativeBinding
    var registration: Registration?
    let reader = StreamFrameReader()
    /// One frame out: the header, a WireGuard message, padding.
    var frame = [UInt8](repeating: 0, count: 65544)

    init(connection: ClientConnection, binding: NativeBinding) {
        self.connection = connection
        self.binding = binding
    }
}

extension Tunnel {
    /// Whether UDP from WireGuard's port reaches the first native relay: a STUN Binding to it
    /// from the shared port, after each welcome. Until it is known no native session starts; no
    /// answer in 1.5 s (or no shared port) sends native sessions over the stream side, when the
    /// relay has one.
    func probeNativeUDP() {
        nativeUDP = nil
        guard let relay = nativeRelays.first else { return }
        guard let s = shared else { return nativeUDPKnown(false) }
        let tid = TransactionID.random()
        nativeProbe = tid
        try? s.send(STUNBinding.request(tid), to: relay.address)
        loop.schedule(after: 1_500_000_000) { [self] in
            guard nativeProbe == tid else { return }
            log("no answer from the native relay's UDP port within 1.5 s" + (nativeStreamURL.map { "; native sessions go over \($0)" } ?? ""))
            nativeUDPKnown(false)
        }
    }

    func nativeUDPKnown(_ reachable: Bool) {
        nativeProbe = nil
        nativeUDP = reachable
        for i in links.indices { updateNative(i) }
    }

    /// Connects link `i`'s stream to the relay's stream side (on a helper thread), then binds over it.
    func startNativeStream(_ i: Int) {
        guard let url = nativeStreamURL, let relay = nativeRelays.first, !links[i].nativeConnecting else { return }
        links[i].nativeConnecting = true
        let key = links[i].key, partner = links[i].keyBytes
        let caFile = config.caFile, insecure = config.insecure
        log("peer \(short(key)): binding a native-relay session over \(url) (UDP does not reach the relay)")
        do {
            try Threads.detach(name: "ferry-connect") { [self] in
                var failure: String?
                var conn: ClientConnection?
                do throws(ClientConnection.Failure) {
                    guard let address = try? Resolver.resolve(url.host, port: url.port).first(where: { $0.ip.isIPv4 }) else {
                        throw ClientConnection.Failure("cannot resolve \(url.host)")
                    }
                    let c = try ClientConnection(to: address, transport: url.transport, host: url.host, caFile: caFile, timeoutMilliseconds: 3000)
                    if let tls = c.tls, let f = tls.verificationFailure, !insecure { throw ClientConnection.Failure("certificate not verified: \(f)") }
                    conn = c
                } catch {
                    failure = "\(error)"
                }
                let box = UncheckedBox(conn), why = failure
                loop.execute { [self] _ in
                    guard let j = byKey[key] else { return }
                    links[j].nativeConnecting = false
                    guard let c = box.value else {
                        log("peer \(short(key)): \(url): \(why ?? "no connection"); staying on TURN")
                        links[j].nativeRefused = true
                        return
                    }
                    adoptNativeStream(j, NativeStream(connection: c, binding: NativeBinding(relay: relay, partner: partner)))
                }
            }
        } catch {
            links[i].nativeConnecting = false
        }
    }

    private func adoptNativeStream(_ i: Int, _ s: NativeStream) {
        let key = links[i].key
        do {
            s.registration = try loop.register(fd: s.connection.fdRaw, events: Epoll.input,
                                               handler: TunnelSocket(tunnel: self) { $0.readNativeStream(key) })
        } catch {
            return
        }
        links[i].nativeStream = s
        performStream(s.binding.start(now: loop.now), link: i)
    }

    func endNativeStream(_ i: Int) {
        guard let s = links[i].nativeStream else { return }
        performStream(s.binding.end(), link: i)
        if let r = s.registration { loop.deregister(fd: s.connection.fdRaw, r) }
        links[i].nativeStream = nil
        statusDirty = true
    }

    func performStream(_ actions: [NativeBinding.Action], link i: Int) {
        guard let s = links[i].nativeStream else { return }
        for a in actions {
            switch a {
            case .send(let bytes):
                _ = bytes.withUnsafeBytes { s.connection.write($0) }
            case .bound(let active, _):
                log("peer \(short(links[i].key)): native relay bound over its stream side (\(active ? "both ends" : "waiting for the peer's"))")
            case .failed(let why):
                log("peer \(short(links[i].key)): \(why); staying on TURN")
                links[i].nativeRefused = true
                endNativeStream(i)
                return
            }
        }
        statusDirty = true
    }

    /// One of WireGuard's packets for link `i`, out on its bound stream.
    func sendNativeStream(_ s: NativeStream, _ data: UnsafeRawPointer, _ length: Int, link i: Int) {
        links[i].txPackets &+= 1
        links[i].txBytes &+= UInt64(length)
        let padded = (length + 3) & ~3
        s.frame.withUnsafeMutableBytes { f in
            ChannelData.writeHeader(channel: 0x4000, length: length, at: f.baseAddress!)
            (f.baseAddress! + 4).copyMemory(from: data, byteCount: length)
            for k in length..<padded { f[4 + k] = 0 }
            _ = s.connection.write(UnsafeRawBufferPointer(rebasing: f[0..<(4 + padded)]))
        }
    }

    /// The relay's frames on link `key`'s stream: its answers to binds, and the partner's packets
    /// for WireGuard.
    func readNativeStream(_ key: String) {
        guard let i = byKey[key], let s = links[i].nativeStream else { return }
        while let n = s.connection.read(into: s.reader.freeSpace) {
            if n == 0 {
                log("peer \(short(key)): the native relay closed its stream; binding again in 1 s")
                endNativeStream(i)
                loop.schedule(after: 1_000_000_000) { [self] in if let j = byKey[key] { updateNative(j) } }
                return
            }
            s.reader.didRead(n)
            let outcome = s.reader.frames { frame in
                switch frame {
                case .stun(let m):
                    if let actions = s.binding.receive(UnsafeRawBufferPointer(m), now: loop.now) { performStream(actions, link: i) }
                case .channelData(let channel, let payload):
                    guard channel == 0x4000, payload.count > 0, links[i].nativeStream === s else { return }
                    links[i].rxPackets &+= 1
                    links[i].rxBytes &+= UInt64(payload.count)
                    if links[i].out.isFull { flushLink(i) }
                    links[i].out.append(payload.baseAddress!, payload.count, to: links[i].deliverTo)
                    links[i].sentToWireGuard = true
                }
            }
            // What was queued for WireGuard points into the reader's buffer: sent before it moves.
            if links[i].sentToWireGuard { flushLink(i) }
            guard outcome == .more, links[i].nativeStream === s else {
                if outcome != .more { log("peer \(short(key)): unframeable bytes from the native relay's stream side") }
                endNativeStream(i)
                return
            }
            s.reader.compact()
        }
    }
}
