import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import FerryWire

/// A native relay `welcome` handed out, with this peer's credential for it.
struct NativeRelay {
    let url: String
    let address: SocketAddress
    let token: [UInt8]
    let key: [UInt8]
}

/// One link's end of a native-relay session, bound from WireGuard's own port.
struct NativeBinding {
    let relay: NativeRelay
    var binder: RelayBinder
    var tid = TransactionID.random()
    var sentAt: UInt64 = 0
    var tries = 0
    var bound = false
    var lastBound: UInt64 = 0
}

/// ferry tunnel's native-relay path (docs/relay-protocol.md): when ICE settles on a relayed pair
/// and both agents offered the same native relay, each binds its end of the session from
/// WireGuard's port (the shared port) and points WireGuard at the relay. From then on the
/// peers' WireGuard packets go WireGuard → relay → WireGuard, past both agents, which only
/// refresh the binds (every 60 s) and watch. A refusal, silence, or WireGuard hearing nothing
/// back for 5 s (`checkHandoffs`) falls back to the agent's TURN path.
extension Tunnel {
    static let nativeRefresh: UInt64 = 60_000_000_000

    /// The shared port, unless proxy mode was asked for; without CAP_NET_RAW, proxy mode it is.
    func openSharedPort() {
        guard let wg = wireGuard else { return sharedPortState = "off (no WireGuard interface)" }
        guard !config.proxy else { return sharedPortState = "off (--proxy)" }
        do {
            let s = try SharedPort(port: wg.listenPort)
            sharedRegistration = try loop.register(fd: s.fd.raw, events: Epoll.input, handler: SharedPortHandler(tunnel: self))
            shared = s
            sharedPortState = "udp \(wg.listenPort)"
            log("tunnel: sharing WireGuard's port \(wg.listenPort) for native-relay binds")
        } catch {
            sharedPortState = "unavailable (\(error)): proxy mode"
            log("tunnel: cannot share WireGuard's port (\(error)); the agent stays on WireGuard's path (proxy mode)")
        }
    }

    /// The native relays of a welcome (`wgrelay:` URLs with a credential), first first.
    func noteNativeRelays(_ relays: [SignalClient.Relay]) {
        nativeRelays = []
        for r in relays where !r.relayToken.isEmpty && r.relayKey.count == 32 {
            for u in r.urls {
                guard let s = ServerURL(u), s.kind == .native, let a = try? Resolver.resolve(s.host, port: s.port).first(where: { $0.ip.isIPv4 }) else { continue }
                nativeRelays.append(NativeRelay(url: u, address: a, token: r.relayToken, key: r.relayKey))
            }
        }
    }

    /// What this agent offers its partners: the first native relay, when it can bind from WireGuard's port.
    var nativeOffer: String? { shared == nil ? nil : nativeRelays.first?.url }

    /// Starts, keeps or ends link `i`'s native session for its current route.
    func updateNative(_ i: Int) {
        let wanted = links[i].route?.throughRelay == true && !links[i].nativeRefused && links[i].remoteNative != nil
            && links[i].remoteNative == nativeOffer
        if !wanted {
            if links[i].native != nil { endNative(i) }
            return
        }
        guard links[i].native == nil, let relay = nativeRelays.first else { return }
        links[i].native = NativeBinding(relay: relay, binder: RelayBinder(token: relay.token, key: relay.key, partner: links[i].keyBytes))
        log("peer \(short(links[i].key)): binding a native-relay session at \(relay.url) from WireGuard's port")
        sendBind(i)
    }

    func sendBind(_ i: Int, lifetime: UInt32? = nil) {
        guard let s = shared, var n = links[i].native else { return }
        n.tid = TransactionID.random()
        n.sentAt = loop.now
        n.tries += 1
        links[i].native = n
        do {
            try s.send(n.binder.request(n.tid, lifetime: lifetime), to: n.relay.address)
        } catch {
            log("peer \(short(links[i].key)): native bind not sent: \(error)")
        }
    }

    /// Ends the link's native session: the relay is told (LIFETIME 0), WireGuard is taken back.
    func endNative(_ i: Int) {
        guard let n = links[i].native else { return }
        if n.bound, let s = shared {
            try? s.send(n.binder.request(TransactionID.random(), lifetime: 0), to: n.relay.address)
        }
        links[i].native = nil
        handOff(i)
        statusDirty = true
    }

    /// STUN on the shared port: WireGuard's own mapping, ICE's checks and answers, and the native
    /// relay's answers to binds.
    func readShared() {
        guard let s = shared else { return }
        while let (payload, from) = (try? s.receive()) ?? nil {
            // Decided inside: a parsed message points into `payload`.
            enum Kind { case reflexive(SocketAddress), ice, other }
            let tid = sharedSTUN
            let kind: Kind = payload.withUnsafeBytes { b in
                guard case .success(let m) = STUNMessage.parse(b), m.method == STUN.Method.binding else { return .other }
                if let tid, let mapped = STUNBinding.mappedAddress(m, tid: tid) { return .reflexive(mapped) }
                return m.fingerprintOffset >= 0 ? .ice : .other
            }
            switch kind {
            case .reflexive(let mapped):
                sharedSTUN = nil
                sharedReflexive = ICECandidate(kind: .srflx, address: mapped, base: SocketAddress(ip: .ipv4Any, port: s.port))
                completeGathering()
                continue
            case .ice:
                var copy = payload
                copy.withUnsafeMutableBytes { fromPeer($0, from: from, via: .direct) }
                continue
            case .other:
                break
            }
            for i in links.indices {
                guard var n = links[i].native, from == n.relay.address else { continue }
                let answer = payload.withUnsafeBytes { n.binder.answer($0, tid: n.tid) }
                links[i].native = n
                guard let answer else { continue }
                nativeAnswer(answer, link: i)
                break
            }
        }
    }

    func nativeAnswer(_ a: RelayBinder.Answer, link i: Int) {
        switch a {
        case .challenged:
            sendBind(i)
        case .bound(let active, let mapped, _):
            let first = links[i].native?.bound == false
            links[i].native?.bound = true
            links[i].native?.tries = 0
            links[i].native?.lastBound = loop.now
            if first {
                log("peer \(short(links[i].key)): native relay bound (\(active ? "both ends" : "waiting for the peer's"); the relay sees WireGuard's port as \(mapped))")
                handOff(i)
            }
        case .refused(let code, let reason):
            log("peer \(short(links[i].key)): native relay refused the bind (\(code) \(reason)); staying on TURN")
            links[i].nativeRefused = true
            endNative(i)
        case .unbound:
            break
        }
        statusDirty = true
    }

    /// After signaling came back (ferryd may have restarted, its relay with it): bound sessions
    /// bind again at once rather than at the next refresh, and a link that gave up on the native
    /// relay may try it again when ICE settles anew.
    func rebindNative() {
        for i in links.indices {
            links[i].nativeRefused = false
            guard links[i].native != nil else { continue }
            links[i].native?.tries = 0
            sendBind(i)
        }
    }

    /// Retries unanswered binds (1 s apart, 5 times, then TURN it is) and refreshes bound ones.
    func tickNative(now: UInt64) {
        for i in links.indices {
            guard let n = links[i].native else { continue }
            if !n.bound && now > n.sentAt + 1_000_000_000 {
                if n.tries >= 5 {
                    log("peer \(short(links[i].key)): no answer from the native relay; staying on TURN")
                    links[i].nativeRefused = true
                    endNative(i)
                } else {
                    sendBind(i)
                }
            } else if n.bound && now > n.lastBound + Tunnel.nativeRefresh && now > n.sentAt + 1_000_000_000 {
                sendBind(i)
            }
        }
    }
}

/// The shared port's raw socket on the loop.
final class SharedPortHandler: EventHandler {
    unowned let tunnel: Tunnel
    init(tunnel: Tunnel) { self.tunnel = tunnel }
    func handleEvent(_ events: UInt32, loop: EventLoop) { tunnel.readShared() }
}
