import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import FerryTLS
import FerryWire
#if canImport(Glibc)
import Glibc
#endif


/// ferry tunnel's signaling: offers and answers sealed end to end, and what they start.
extension Tunnel {
    // MARK: Signaling

    func handle(_ event: SignalClient.Event) {
        switch event {
        case .welcome(let network, _, let relays):
            log("signaling: welcome to network \(network) as \(short(publicKey)); \(relays.count) relay(s)")
            welcomed = true
            relay.configure(relays)
            noteNativeRelays(relays)
            for i in links.indices { links[i].online = false }
            rebindNative()
            signal.post(.subscribe(links.map(\.key)))
            // A (re)connection means the server may have restarted: gather again, restart ICE.
            startGathering()
        case .peerOnline(let key):
            guard let i = byKey[key] else { return }
            links[i].online = true
            log("peer \(short(key)): online")
            if gathered && controlling(i) { offer(i) }
        case .peerOffline(let key):
            guard let i = byKey[key] else { return }
            links[i].online = false
            log("peer \(short(key)): offline in signaling")
        case .message(let type, let from, let payload, _):
            guard let i = byKey[from], let payload else { return }
            received(type, payload: payload, link: i)
        case .error(let code, _):
            if code != "peer_offline" { log("signaling: error \(code)") }
        case .ended(let ending):
            welcomed = false
            log("signaling: ended (\(ending))")
        }
        statusDirty = true
    }

    func controlling(_ i: Int) -> Bool { publicKeyBytes.lexicographicallyPrecedes(links[i].keyBytes) == false }

    func localCandidates() -> [ICECandidate] {
        var out: [ICECandidate] = []
        if !config.relayOnly {
            // With the shared port, ICE runs on WireGuard's own port: the pair it finds is one
            // WireGuard can use itself (Tunnel+Native). Otherwise on the agent's ICE socket.
            let port = shared != nil ? wireGuard?.listenPort ?? icePort : icePort
            let srflx = shared != nil ? sharedReflexive : relay.reflexive
            // Never the WireGuard interface's own addresses: the tunnel must not run over itself.
            for ip in Interfaces.ipv4Addresses(excluding: config.interface) { out.append(ICECandidate(kind: .host, address: SocketAddress(ip: ip, port: port))) }
            if let srflx, !out.contains(where: { $0.address == srflx.address }) { out.append(srflx) }
        }
        if let c = relay.candidate { out.append(c) }
        return out
    }

    func newSession(_ i: Int, controlling: Bool) {
        var agent = ICEAgent(controlling: controlling, now: loop.now)
        for c in localCandidates() { agent.addLocal(c) }
        links[i].ice = agent
    }

    func offer(_ i: Int) {
        newSession(i, controlling: true)
        links[i].lastOffer = loop.now
        send("offer", link: i, body: description(i, answering: nil))
        log("peer \(short(links[i].key)): offer sent (\(links[i].ice!.locals.count) candidates)")
    }

    func description(_ i: Int, answering: String?) -> JSONValue {
        let agent = links[i].ice!
        return SessionDescription(ufrag: agent.localUfrag, password: agent.localPassword, candidates: agent.locals, answering: answering,
                                  wireGuardPort: wireGuard?.listenPort, native: nativeOffer).json
    }

    func send(_ type: String, link i: Int, body: JSONValue) {
        do {
            let sealed = try sealer.seal(body.encoded(), type: type, to: links[i].keyBytes, nowMilliseconds: wallClockMilliseconds())
            signal.post(.route(type: type, to: links[i].key, payload: sealed))
        } catch {
            log("peer \(short(links[i].key)): cannot seal: \(error)")
        }
    }

    func received(_ type: String, payload: String, link i: Int) {
        let plain: [UInt8]
        do {
            plain = try sealer.open(payload, type: type, from: links[i].keyBytes, nowMilliseconds: wallClockMilliseconds())
            saveMarks()
        } catch {
            log("peer \(short(links[i].key)): \(type) refused: \(error)")
            return
        }
        guard let body = JSONValue.parse(plain), let d = SessionDescription(body) else {
            log("peer \(short(links[i].key)): \(type) without ICE credentials")
            return
        }
        let (ufrag, pwd, remotes) = (d.ufrag, d.password, d.candidates)
        if let port = d.wireGuardPort { links[i].remoteWireGuardPort = port }
        links[i].remoteNative = d.native
        switch type {
        case "offer":
            guard gathered else { return }  // we answer once gathered; the offerer retries
            newSession(i, controlling: false)
            links[i].online = true
            start(i, ufrag: ufrag, pwd: pwd, remotes: remotes)
            send("answer", link: i, body: description(i, answering: ufrag))
            log("peer \(short(links[i].key)): offer received, answered (\(remotes.count) remote candidates)")
        case "answer":
            guard let agent = links[i].ice, agent.controlling, d.answering == agent.localUfrag else { return }
            start(i, ufrag: ufrag, pwd: pwd, remotes: remotes)
            log("peer \(short(links[i].key)): answer received (\(remotes.count) remote candidates)")
        default:
            break
        }
    }

    func start(_ i: Int, ufrag: String, pwd: String, remotes: [ICECandidate]) {
        links[i].ice!.setRemoteCredentials(ufrag: ufrag, password: pwd)
        for r in remotes where r.address.ip.isIPv4 { links[i].ice!.addRemote(r) }
        // Permissions on our relay for every remote address, so relayed checks get through.
        handOff(i)
        performRelay(relay.permit(remotes.map(\.address.ip), now: loop.now))
    }
}
