import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import FerryWire

/// ferry tunnel's native-relay path (docs/relay-protocol.md): when ICE settles on a relayed pair
/// and both agents offered the same native relay, each binds its end of the session from
/// WireGuard's port (the shared port) and points WireGuard at the relay. From then on the
/// peers' WireGuard packets go WireGuard → relay → WireGuard, past both agents, which only
/// refresh the binds (every 60 s) and watch. A refusal, silence, or WireGuard hearing nothing
/// back for 5 s (`checkHandoffs`) falls back to the agent's TURN path.
extension Tunnel {
    /// The shared port, unless proxy mode was asked for; without CAP_NET_RAW, proxy mode it is.
    func openSharedPort() {
        guard let wg = wireGuard else { return sharedPortState = "off (no WireGuard interface)" }
        guard !config.proxy else { return sharedPortState = "off (--proxy)" }
        do {
            let s = try SharedPort(port: wg.listenPort)
            sharedRegistration = try loop.register(fd: s.fd.raw, events: Epoll.input, handler: TunnelSocket(tunnel: self) { $0.readShared() })
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
        nativeStreamURL = nil
        for r in relays where !r.relayToken.isEmpty && r.relayKey.count == 32 {
            let first = nativeRelays.isEmpty
            for u in r.urls {
                guard let s = ServerURL(u), s.kind == .native else { continue }
                if s.transport != .udp {
                    if first && nativeStreamURL == nil { nativeStreamURL = s }
                    continue
                }
                guard let a = try? Resolver.resolve(s.host, port: s.port).first(where: { $0.ip.isIPv4 }) else { continue }
                nativeRelays.append(NativeRelay(url: u, address: a, token: r.relayToken, key: r.relayKey))
            }
            if nativeRelays.isEmpty { nativeStreamURL = nil }
        }
        probeNativeUDP()
    }

    /// What this agent offers its partners: the first native relay, when it can bind from
    /// WireGuard's port or over the relay's stream side (never in proxy mode).
    var nativeOffer: String? { config.proxy || (shared == nil && nativeStreamURL == nil) ? nil : nativeRelays.first?.url }

    /// Starts, keeps or ends link `i`'s native session for its current route (`NativePath`).
    func updateNative(_ i: Int) {
        let path = NativePath.choose(relayedRoute: links[i].route?.throughRelay == true, refused: links[i].nativeRefused,
                                     remoteOffer: links[i].remoteNative, localOffer: nativeOffer,
                                     udpReaches: nativeUDP, streamSide: nativeStreamURL != nil)
        // While the probe runs (after each welcome), a session already bound stays.
        if path == .wait { return }
        if path != .udp && links[i].native != nil { endNative(i) }
        if path != .stream && links[i].nativeStream != nil { endNativeStream(i) }
        switch path {
        case .none, .wait:
            return
        case .stream:
            if links[i].nativeStream == nil { startNativeStream(i) }
        case .udp:
            guard links[i].native == nil, let relay = nativeRelays.first else { return }
            var n = NativeBinding(relay: relay, partner: links[i].keyBytes)
            log("peer \(short(links[i].key)): binding a native-relay session at \(relay.url) from WireGuard's port")
            let actions = n.start(now: loop.now)
            links[i].native = n
            perform(actions, link: i)
        }
    }

    /// Ends the link's native session: the relay is told (LIFETIME 0), WireGuard is taken back.
    func endNative(_ i: Int) {
        guard var n = links[i].native else { return }
        let actions = n.end()
        links[i].native = nil
        perform(actions, link: i, relay: n.relay.address)
        handOff(i)
        statusDirty = true
    }

    /// Carries out what a link's `NativeBinding` asks for.
    func perform(_ actions: [NativeBinding.Action], link i: Int, relay: SocketAddress? = nil) {
        guard let to = relay ?? links[i].native?.relay.address else { return }
        for a in actions {
            switch a {
            case .send(let bytes):
                do { try shared?.send(bytes, to: to) } catch { log("peer \(short(links[i].key)): native bind not sent: \(error)") }
            case .bound(let active, let mapped):
                log("peer \(short(links[i].key)): native relay bound (\(active ? "both ends" : "waiting for the peer's"); the relay sees WireGuard's port as \(mapped))")
                handOff(i)
            case .failed(let why):
                log("peer \(short(links[i].key)): \(why); staying on TURN")
                links[i].nativeRefused = true
                endNative(i)
            }
        }
        statusDirty = true
    }

    /// STUN on the shared port: WireGuard's own mapping, ICE's checks and answers, and the native
    /// relay's answers to binds.
    func readShared() {
        guard let s = shared else { return }
        while let (payload, from) = (try? s.receive()) ?? nil {
            // Decided inside: a parsed message points into `payload`.
            enum Kind { case reflexive(SocketAddress), probe, ice, other }
            let tid = sharedSTUN, probe = nativeProbe
            let kind: Kind = payload.withUnsafeBytes { b in
                guard case .success(let m) = STUNMessage.parse(b), m.method == STUN.Method.binding else { return .other }
                if let tid, let mapped = STUNBinding.mappedAddress(m, tid: tid) { return .reflexive(mapped) }
                if let probe, STUNBinding.mappedAddress(m, tid: probe) != nil { return .probe }
                return m.fingerprintOffset >= 0 ? .ice : .other
            }
            switch kind {
            case .reflexive(let mapped):
                sharedSTUN = nil
                sharedReflexive = ICECandidate(kind: .srflx, address: mapped, base: SocketAddress(ip: .ipv4Any, port: s.port))
                completeGathering()
                continue
            case .probe:
                nativeUDPKnown(true)
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
                let actions = payload.withUnsafeBytes { n.receive($0, now: loop.now) }
                links[i].native = n
                guard let actions else { continue }
                perform(actions, link: i)
                break
            }
        }
    }

    /// After signaling came back (ferryd may have restarted, its relay with it): bound sessions
    /// bind again at once rather than at the next refresh, and a link that gave up on the native
    /// relay may try it again when ICE settles anew.
    func rebindNative() {
        for i in links.indices {
            links[i].nativeRefused = false
            if let s = links[i].nativeStream { performStream(s.binding.rebind(now: loop.now), link: i) }
            guard var n = links[i].native else { continue }
            let actions = n.rebind(now: loop.now)
            links[i].native = n
            perform(actions, link: i)
        }
    }

    /// Retries unanswered binds and refreshes bound ones.
    func tickNative(now: UInt64) {
        for i in links.indices {
            if let s = links[i].nativeStream { performStream(s.binding.tick(now: now), link: i) }
            guard var n = links[i].native else { continue }
            let actions = n.tick(now: now)
            links[i].native = n
            perform(actions, link: i)
        }
    }
}
