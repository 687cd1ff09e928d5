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
        sharedReflexive = nil
        sharedSTUN = nil
        performRelay(relay.start(now: loop.now))
    }

    /// Carries out what `AgentRelay` decided: measurements and TURN bytes from the ICE socket (or
    /// on the stream), connecting a stream off the loop, closing it, and what gathering does next.
    func performRelay(_ actions: [AgentRelay.Action]) {
        for a in actions {
            switch a {
            case .measure(let tid, let address):
                _ = try? STUNBinding.request(tid).withUnsafeBytes { b throws(SystemError) in try Sockets.sendDatagram(ice.raw, b, to: address) }
            case .send(let bytes):
                sendTURN(bytes)
            case .connect(let u, let attempt):
                connectRelay(u, attempt: attempt)
            case .closeStream:
                if let c = relayStream, let r = streamRegistration { loop.deregister(fd: c.fdRaw, r) }
                streamRegistration = nil
                relayStream = nil
            case .gathered:
                finishGathering()
            case .regather:
                startGathering()
            case .log(let line):
                log(line)
            }
        }
    }

    /// A binding answer from a relay being ranked; true when it was one.
    func rankingAnswer(_ p: UnsafeMutableRawBufferPointer, from: SocketAddress) -> Bool {
        guard case .success(let m) = STUNMessage.parse(UnsafeRawBufferPointer(p)) else { return false }
        return relay.rankingAnswer(m, from: from, now: loop.now)
    }

    /// TCP and TLS connect on a helper thread; the connection comes back to the loop.
    func connectRelay(_ u: ServerURL, attempt: Int) {
        let caFile = config.caFile, insecure = config.insecure
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
                    switch box.value {
                    case .failure(let e):
                        performRelay(relay.connectFailed(attempt: attempt, url: u, reason: "\(e)", now: loop.now))
                    case .success(let c):
                        adoptStream(c, url: u, attempt: attempt)
                    }
                }
            }
        } catch {
            performRelay(relay.connectFailed(attempt: attempt, url: u, reason: "\(error)", now: loop.now))
        }
    }

    /// A connected stream for `attempt`: the relay allocates on it (a late one is dropped).
    func adoptStream(_ c: ClientConnection, url: ServerURL, attempt: Int) {
        guard attempt == relay.attempt else { return }
        streamReader.reset()
        do {
            streamRegistration = try loop.register(fd: c.fdRaw, events: Epoll.input, handler: TunnelSocket(tunnel: self) { $0.readStream() })
        } catch {
            return performRelay(relay.connectFailed(attempt: attempt, url: url, reason: "cannot register: \(error)", now: loop.now))
        }
        guard let actions = relay.connected(attempt: attempt, tls: url.transport == .tls, server: c.server, now: loop.now) else {
            loop.deregister(fd: c.fdRaw, streamRegistration!)
            streamRegistration = nil
            return
        }
        relayStream = c
        performRelay(actions)
    }

    /// Gathering ends once the relay is allocated and, with the shared port, WireGuard's own
    /// mapping is known: a STUN binding from WireGuard's port to the relay server, answered on
    /// the shared port (or not within 500 ms: no server-reflexive candidate then).
    func finishGathering() {
        guard !gathered else { return }
        if let s = shared, !config.relayOnly, sharedReflexive == nil, sharedSTUN == nil {
            if let a = relay.udpServer ?? nativeRelays.first?.address {
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
        if let server = relay.udpServer {
            _ = try? bytes.withUnsafeBytes { b throws(SystemError) in try Sockets.sendDatagram(ice.raw, b, to: server) }
        } else if let c = relayStream, relay.isStream {
            try? c.send(bytes, timeoutMilliseconds: 1000)
        }
    }
}
