import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import FerryTLS
import FerryWire
#if canImport(Glibc)
import Glibc
#endif


/// ferry tunnel's candidates and relay: gathering, ranking relays, the TURN allocation.
extension Tunnel {
    // MARK: Gathering and the relay

    func startGathering() {
        gathered = false
        relayCandidate = nil
        reflexive = nil
        sharedReflexive = nil
        sharedSTUN = nil
        closeRelay()
        relayAttempt &+= 1  // a connection still being made for the last gathering is dropped
        performRelay(relays.start(relayURLs, now: loop.now) { u in try? Resolver.resolve(u.host, port: u.port).first(where: { $0.ip.isIPv4 }) })
    }

    /// Carries out what `RelaySelection` decided: measurements from the ICE socket, an attempt,
    /// or giving up on relays.
    func performRelay(_ actions: [RelaySelection.Action]) {
        for a in actions {
            switch a {
            case .measure(let tid, let address):
                _ = try? STUNBinding.request(tid).withUnsafeBytes { b throws(SystemError) in try Sockets.sendDatagram(ice.raw, b, to: address) }
            case .attempt(let u):
                attemptRelay(u)
            case .exhausted:
                log("relay: no TURN server reachable (\(relays.urls.count) tried); direct paths only")
                finishGathering()
            }
        }
    }

    /// A binding answer from a relay being ranked; true when it was one.
    func rankingAnswer(_ p: UnsafeMutableRawBufferPointer, from: SocketAddress) -> Bool {
        guard case .success(let m) = STUNMessage.parse(UnsafeRawBufferPointer(p)) else { return false }
        return relays.answer(m, from: from, now: loop.now)
    }

    /// The ranking ended or an attempt timed out (from `tick`).
    func tickRelays(now: UInt64) {
        let ranking = relays.isRanking
        let actions = relays.tick(now: now)
        guard !actions.isEmpty else { return }
        if ranking {
            let measured = relays.roundTrips.sorted { $0.value < $1.value }.map { "\($0.key) \(Double($0.value / 10_000) / 100) ms" }
            log("relays by round trip: \(measured.isEmpty ? "none answered" : measured.joined(separator: ", "))")
        } else {
            log("relay: no answer over \(relayTransport) within 3 s")
            closeRelay()
        }
        performRelay(actions)
    }

    func closeRelay() {
        if case .stream(let c) = relay, let r = streamRegistration {
            loop.deregister(fd: c.fdRaw, r)
            streamRegistration = nil
        }
        relay = .none
        turn = nil
        channelPeers = [:]
        peerChannels = [:]
        relayTransport = "none"
    }

    func attemptRelay(_ u: ServerURL) {
        relayAttempt &+= 1
        guard let creds = relayCredentials[u.text] else { return performRelay([relays.failed(now: loop.now)]) }
        if u.transport == .udp {
            guard let address = try? Resolver.resolve(u.host, port: u.port).first(where: { $0.ip.isIPv4 }) else {
                return performRelay([relays.failed(now: loop.now)])
            }
            relay = .udp(address)
            relayTransport = "udp \(address)"
            var t = TURNClient(credentials: creds, reliable: false, software: "ferry-tunnel")
            let request = t.allocate(now: loop.now)
            turn = t
            sendTURN(request)
            return
        }
        // TCP and TLS connect on a helper thread; the connection comes back to the loop.
        let caFile = config.caFile, insecure = config.insecure, log = self.log
        let attempt = relayAttempt
        do {
            try Threads.detach(name: "ferry-connect") { [self] in
                let result: Result<ClientConnection, ClientConnection.Failure>
                do throws(ClientConnection.Failure) {
                    guard let address = try? Resolver.resolve(u.host, port: u.port).first(where: { $0.ip.isIPv4 }) else {
                        throw ClientConnection.Failure("cannot resolve \(u.host)")
                    }
                    let c = try ClientConnection(to: address, transport: u.transport, host: u.host, caFile: caFile,
                                                 alpn: u.transport == .tls ? ["stun.turn"] : [], timeoutMilliseconds: 3000)
                    if let tls = c.tls, let f = tls.verificationFailure, !insecure {
                        throw ClientConnection.Failure("certificate not verified: \(f)")
                    }
                    result = .success(c)
                } catch {
                    result = .failure(error)
                }
                let box = UncheckedBox(result)
                loop.execute { [self] _ in
                    guard attempt == relayAttempt else { return }
                    switch box.value {
                    case .failure(let e):
                        log("relay: \(u): \(e)")
                        performRelay([relays.failed(now: loop.now)])
                    case .success(let c):
                        adoptStream(c, url: u, credentials: creds)
                    }
                }
            }
        } catch {
            performRelay([relays.failed(now: loop.now)])
        }
    }

    func adoptStream(_ c: ClientConnection, url: ServerURL, credentials: TURNClient.Credentials) {
        relay = .stream(c)
        relayTransport = "\(url.transport == .tls ? "tls" : "tcp") \(c.server)"
        streamReader.reset()
        do {
            streamRegistration = try loop.register(fd: c.fdRaw, events: Epoll.input, handler: TunnelSocket(tunnel: self) { $0.readStream() })
        } catch {
            log("relay: cannot register \(url): \(error)")
            return performRelay([relays.failed(now: loop.now)])
        }
        relays.connected(now: loop.now)
        var t = TURNClient(credentials: credentials, reliable: true, software: "ferry-tunnel")
        let request = t.allocate(now: loop.now)
        turn = t
        sendTURN(request)
    }

    /// Gathering ends once the relay is allocated and, with the shared port, WireGuard's own
    /// mapping is known: a STUN binding from WireGuard's port to the relay server, answered on
    /// the shared port (or not within 500 ms: no server-reflexive candidate then).
    func finishGathering() {
        guard !gathered else { return }
        if let s = shared, !config.relayOnly, sharedReflexive == nil, sharedSTUN == nil {
            var server: SocketAddress?
            if case .udp(let a) = relay { server = a }
            if let a = server ?? nativeRelays.first?.address {
                let tid = TransactionID.random()
                sharedSTUN = tid
                try? s.send(STUNBinding.request(tid), to: a)
                loop.schedule(after: 500_000_000) { [self] in
                    guard sharedSTUN == tid else { return }
                    log("no answer to WireGuard's port's STUN binding within 500 ms: no server-reflexive candidate on it")
                    completeGathering()
                }
                return
            }
        }
        completeGathering()
    }

    func completeGathering() {
        guard !gathered else { return }
        gathered = true
        let n = localCandidates().count
        log("gathered \(n) candidate(s): \(localCandidates().map { "\($0.kind.rawValue) \($0.address)" }.joined(separator: ", "))")
        // Restart every session with the new candidates: the controlling side offers.
        for i in links.indices {
            links[i].ice = nil
            if links[i].online && controlling(i) { offer(i) }
        }
        statusDirty = true
    }

    /// A TURN control message to the server over the relay's transport.
    func sendTURN(_ bytes: [UInt8]) {
        switch relay {
        case .none: break
        case .udp(let server):
            _ = try? bytes.withUnsafeBytes { b throws(SystemError) in try Sockets.sendDatagram(ice.raw, b, to: server) }
        case .stream(let c):
            try? c.send(bytes, timeoutMilliseconds: 1000)
        }
    }

    func turnEvents(_ events: [TURNClient.Event]) {
        for e in events {
            switch e {
            case .allocated(let relayed, let mapped, let lifetime):
                log("relay: allocated \(relayed) over \(relayTransport) (lifetime \(lifetime) s)")
                relays.allocated()
                // raddr 0.0.0.0 rport 0: the mapped address is the host's own where there is no
                // NAT, and a relay candidate must not reveal it (--relay-only promises as much).
                relayCandidate = ICECandidate(kind: .relay, address: relayed, base: ICECandidate.undisclosed, localPreference: 65535)
                if case .udp = relay, let mapped { reflexive = ICECandidate(kind: .srflx, address: mapped, base: SocketAddress(ip: .ipv4Any, port: icePort)) }
                finishGathering()
            case .failed(let request, let code, let reason):
                if request == .allocate {
                    log("relay: allocate over \(relayTransport) failed: \(code == 0 ? reason : "\(code) \(reason)")")
                    closeRelay()
                    performRelay([relays.failed(now: loop.now)])
                } else if case .refresh = request {
                    log("relay: refresh failed (\(code) \(reason)); gathering again")
                    startGathering()
                }
            case .channelBound(let number, let peer):
                channelPeers[number] = peer
                peerChannels[peer] = number
                log("relay: channel 0x\(String(number, radix: 16)) bound to \(peer)")
            default:
                break
            }
        }
    }
}
