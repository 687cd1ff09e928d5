import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import FerryTLS
import FerryWire
#if canImport(Glibc)
import Glibc
#endif

/// What `ferry tunnel` runs with (docs/cli.md).
public struct TunnelConfig: Sendable {
    /// A local peer of the tunnel: its WireGuard public key, and where its packets go on this
    /// host (WireGuard's own listen port, or any UDP endpoint without WireGuard).
    public struct Peer: Sendable {
        public var key: String
        public var deliverTo: SocketAddress
        public init(key: String, deliverTo: SocketAddress) {
            self.key = key
            self.deliverTo = deliverTo
        }
    }

    public var interface: String?
    public var privateKey: [UInt8] = []
    public var peers: [Peer] = []
    public var signal: ServerURL
    public var token: String
    public var caFile: String?
    public var insecure = false
    /// The UDP port of the agent's ICE socket (0: any).
    public var port: UInt16 = 0
    /// Only relayed candidates (as WebRTC's iceTransportPolicy "relay").
    public var relayOnly = false
    public var statusFile: String?

    public init(signal: ServerURL, token: String) {
        self.signal = signal
        self.token = token
    }
}

/// The `ferry tunnel` agent: for every peer of a WireGuard interface that is present in its
/// signaling network, gathers candidates (host, server-reflexive, and relayed through Ferry's
/// TURN: UDP first, then TCP, then TLS), exchanges them sealed (`SealedEnvelope`), runs ICE
/// (`ICEAgent`), and carries the peer's WireGuard packets on the selected path through a local
/// UDP socket that WireGuard uses as the peer's endpoint.
///
/// Threads: one event loop owns every socket and all state below (loop thread only, hence
/// `@unchecked Sendable`); signaling runs on a helper thread (`SignalConnection`) and hops here
/// with `loop.execute`, as does connecting a TURN stream. Per packet: recvmmsg batches into
/// preallocated slots with 4 bytes of headroom for the ChannelData header, written in place, and
/// sendmmsg batches out; no allocation (the control path allocates freely).
public final class Tunnel: EventHandler, @unchecked Sendable {
    struct Link {
        let key: String
        let keyBytes: [UInt8]
        let proxy: FileDescriptor
        let proxyPort: UInt16
        let deliverTo: SocketAddress
        let out: UDPSendQueue
        var registration: Registration?
        var ice: ICEAgent?
        var route: ICERoute?
        var online = false
        var lastOffer: UInt64 = 0
        var restartAt: UInt64 = 0
        var routeSince: UInt64 = 0
        var rxPackets: UInt64 = 0, rxBytes: UInt64 = 0, txPackets: UInt64 = 0, txBytes: UInt64 = 0
        var dropped: UInt64 = 0
        var sentToWireGuard = false
        /// The peer's WireGuard listen port (from its offer or answer).
        var remoteWireGuardPort: UInt16?
        /// WireGuard talks to the peer itself at this endpoint (see `handOff`).
        var handedOff: SocketAddress?
        var handoffTransfer: (rx: UInt64, tx: UInt64, at: UInt64)?
        var handoffRefused = false
    }

    enum Relay { case none, udp(SocketAddress), stream(ClientConnection) }

    public let config: TunnelConfig
    let loop: EventLoop
    let engine: Engine
    let log: @Sendable (String) -> Void
    let publicKey: String
    let publicKeyBytes: [UInt8]
    var sealer: SealedEnvelope
    let signal: SignalConnection
    let wireGuard: WireGuardInterface?

    let ice: FileDescriptor
    let icePort: UInt16
    var iceRegistration: Registration?
    let batch = UDPReceiveBatch(capacity: 64, slotSize: 2048, headroom: ChannelData.headerLength)
    let iceOut = UDPSendQueue(capacity: 128)

    var links: [Link] = []
    var byKey: [String: Int] = [:]
    var byRemote: [SocketAddress: Int] = [:]

    // The relay: one allocation shared by every link.
    var relay = Relay.none
    var turn: TURNClient?
    var relayCandidate: ICECandidate?
    var reflexive: ICECandidate?
    var relayURLs: [ServerURL] = []
    var relayCredentials: [String: TURNClient.Credentials] = [:]
    var relayAttempt = 0
    /// The relay's bound channels both ways, kept here for the packet path (a lookup in a
    /// dictionary, instead of a copy of the whole `TURNClient` and a scan of its channels).
    var channelPeers: [UInt16: SocketAddress] = [:]
    var peerChannels: [SocketAddress: UInt16] = [:]
    var relayGeneration = 0
    var ranking: [TransactionID: (host: String, address: SocketAddress, sent: UInt64)] = [:]
    var roundTrips: [String: UInt64] = [:]
    var relayDeadline: UInt64 = 0
    var relayTransport = "none"
    var streamRegistration: Registration?
    var streamInput = [UInt8](repeating: 0, count: 1 << 17)
    var streamFill = 0
    var streamFrame = [UInt8](repeating: 0, count: 4 + 65536 + 4)
    var gathered = false
    var welcomed = false
    var statusDirty = true
    var lastStatus: UInt64 = 0
    var lastHandoffCheck: UInt64 = 0
    var started: UInt64

    public struct Failure: Error, CustomStringConvertible { public let description: String }

    var signals: SignalSource?

    /// SIGTERM or SIGINT: WireGuard gets back the endpoint each peer had before the agent set its
    /// local one (a dead local port would leave the peer unreachable until the agent runs again;
    /// the endpoint it had may still work directly); a path handed to WireGuard stays. SIGHUP is
    /// ignored.
    private func stop(_ signal: Int32) {
        guard signal != SIGHUP else { return }
        if let wg = wireGuard {
            for l in links where l.handedOff == nil {
                // A 127.0.0.1 endpoint before the agent was an earlier agent's local port.
                guard let original = wg.endpoints[l.key], original.ip != IPAddress("127.0.0.1")! else {
                    log("peer \(short(l.key)): no endpoint before the agent; WireGuard keeps 127.0.0.1:\(l.proxyPort)")
                    continue
                }
                do {
                    try wg.setEndpoint(peer: l.key, original)
                    log("peer \(short(l.key)): endpoint restored to \(original)")
                } catch {
                    log("peer \(short(l.key)): \(error)")
                }
            }
        }
        log("tunnel: stopped (\(signal == SIGINT ? "SIGINT" : "SIGTERM"))")
        exit(0)
    }

    /// Receive and send buffers of the ICE and proxy sockets. WireGuard writes a burst of a
    /// TCP window at once; at Linux's default (208 KiB, ~90 full-size packets) a burst the agent
    /// is not scheduled in time for overflows the proxy socket and TCP inside the tunnel backs
    /// off (test_tunnel_integrity.py). wireguard-go asks for 7 MiB for the same reason; as root
    /// the agent gets this size whatever `net.core.rmem_max` says (SO_RCVBUFFORCE).
    static let socketBuffer = 4 << 20

    public init(config: TunnelConfig, log: @escaping @Sendable (String) -> Void) throws(Failure) {
        self.config = config
        self.log = log
        var cfg = config
        do {
            if let name = config.interface {
                let wg = try WireGuardInterface.read(name)
                wireGuard = wg
                cfg.privateKey = wg.privateKey
                cfg.peers = wg.peers.map { TunnelConfig.Peer(key: $0, deliverTo: SocketAddress(ip: IPAddress("127.0.0.1")!, port: wg.listenPort)) }
            } else {
                wireGuard = nil
            }
        } catch {
            throw Failure(description: "\(error)")
        }
        guard let sealer = SealedEnvelope(privateKey: cfg.privateKey) else { throw Failure(description: "the private key is not an X25519 key") }
        self.sealer = sealer
        publicKeyBytes = sealer.publicKey
        publicKey = Base64.std(sealer.publicKey)
        do {
            engine = try Engine(workers: 1, pin: false)
            loop = engine.loops[0]
            ice = try Sockets.udpClient(local: SocketAddress(ip: .ipv4Any, port: config.port))
            icePort = try Sockets.localAddress(ice.raw).port
            try Sockets.applyBuffers(ice.raw, receive: Tunnel.socketBuffer, send: Tunnel.socketBuffer)
            for p in cfg.peers {
                let fd = try Sockets.udpClient(local: SocketAddress(ip: IPAddress("127.0.0.1")!, port: 0))
                let port = try Sockets.localAddress(fd.raw).port
                try Sockets.applyBuffers(fd.raw, receive: Tunnel.socketBuffer, send: Tunnel.socketBuffer)
                links.append(Link(key: p.key, keyBytes: Base64.decode(p.key) ?? [], proxy: fd, proxyPort: port,
                                  deliverTo: p.deliverTo, out: UDPSendQueue(capacity: 64)))
                byKey[p.key] = links.count - 1
            }
        } catch {
            throw Failure(description: "\(error)")
        }
        started = monotonicNanos()
        signal = SignalConnection(url: config.signal, privateKey: cfg.privateKey, token: config.token, caFile: config.caFile,
                                  insecure: config.insecure, log: log)
    }

    /// Runs until the process ends: sets WireGuard's endpoints, starts signaling and the loop.
    public func run() throws(Failure) {
        log("tunnel: key \(publicKey), ICE socket udp port \(icePort), \(links.count) peer(s)")
        for l in links {
            if let wg = wireGuard {
                do {
                    try wg.setEndpoint(peer: l.key, SocketAddress(ip: IPAddress("127.0.0.1")!, port: l.proxyPort))
                } catch {
                    throw Failure(description: "\(error)")
                }
            }
            log("peer \(short(l.key)): local endpoint 127.0.0.1:\(l.proxyPort) (delivers to \(l.deliverTo))")
        }
        loop.execute { [self] _ in setUp() }
        do {
            // SIGTERM and SIGINT reach the loop (every thread starts after this, with the mask).
            SignalSource.blockProcessSignals()
            signals = try SignalSource(loop: loop) { [self] s in stop(s) }
            try engine.start()
            try signal.start { [self] event in loop.execute { [self] _ in handle(event) } }
        } catch {
            throw Failure(description: "\(error)")
        }
        while true { sleep(3600) }
    }

    func short(_ key: String) -> String { String(key.prefix(8)) + "…" }

    private func setUp() {
        do {
            iceRegistration = try loop.register(fd: ice.raw, events: Epoll.input, handler: self)
            for i in links.indices {
                links[i].registration = try loop.register(fd: links[i].proxy.raw, events: Epoll.input, handler: ProxyHandler(tunnel: self, index: i))
            }
        } catch {
            log("tunnel: cannot register sockets: \(error)")
        }
        loop.onIterationEnd { [self] in flush() }
        scheduleTick()
    }

    private func scheduleTick() {
        loop.schedule(after: ICEAgent.pace) { [self] in
            tick()
            scheduleTick()
        }
    }

    // MARK: Signaling

    private func handle(_ event: SignalClient.Event) {
        switch event {
        case .welcome(let network, _, let relays):
            log("signaling: welcome to network \(network) as \(short(publicKey)); \(relays.count) relay(s)")
            welcomed = true
            relayURLs = []
            relayCredentials = [:]
            for r in relays {
                for u in r.urls {
                    guard let s = ServerURL(u), s.kind == .turn else { continue }
                    relayURLs.append(s)
                    relayCredentials[s.text] = .init(username: r.username, password: r.credential)
                }
            }
            for i in links.indices { links[i].online = false }
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

    private func controlling(_ i: Int) -> Bool { publicKeyBytes.lexicographicallyPrecedes(links[i].keyBytes) == false }

    private func localCandidates() -> [ICECandidate] {
        var out: [ICECandidate] = []
        if !config.relayOnly {
            // Never the WireGuard interface's own addresses: the tunnel must not run over itself.
            for ip in Interfaces.ipv4Addresses(excluding: config.interface) { out.append(ICECandidate(kind: .host, address: SocketAddress(ip: ip, port: icePort))) }
            if let reflexive, !out.contains(where: { $0.address == reflexive.address }) { out.append(reflexive) }
        }
        if let relayCandidate { out.append(relayCandidate) }
        return out
    }

    private func newSession(_ i: Int, controlling: Bool) {
        var agent = ICEAgent(controlling: controlling, now: loop.now)
        for c in localCandidates() { agent.addLocal(c) }
        links[i].ice = agent
    }

    private func offer(_ i: Int) {
        newSession(i, controlling: true)
        links[i].lastOffer = loop.now
        send("offer", link: i, body: description(i, answering: nil))
        log("peer \(short(links[i].key)): offer sent (\(links[i].ice!.locals.count) candidates)")
    }

    private func description(_ i: Int, answering: String?) -> JSONValue {
        let agent = links[i].ice!
        var members: [(String, JSONValue)] = [("ufrag", .string(agent.localUfrag)), ("pwd", .string(agent.localPassword)),
                                             ("candidates", .array(agent.locals.map { .string($0.sdp) }))]
        if let answering { members.append(("offer", .string(answering))) }
        if let wg = wireGuard { members.append(("wg_port", .number(Double(wg.listenPort)))) }
        return .object(members)
    }

    private func send(_ type: String, link i: Int, body: JSONValue) {
        do {
            let sealed = try sealer.seal(body.encoded(), type: type, to: links[i].keyBytes, nowMilliseconds: wallClockMilliseconds())
            signal.post(.route(type: type, to: links[i].key, payload: sealed))
        } catch {
            log("peer \(short(links[i].key)): cannot seal: \(error)")
        }
    }

    private func received(_ type: String, payload: String, link i: Int) {
        let plain: [UInt8]
        do {
            plain = try sealer.open(payload, type: type, from: links[i].keyBytes, nowMilliseconds: wallClockMilliseconds())
        } catch {
            log("peer \(short(links[i].key)): \(type) refused: \(error)")
            return
        }
        guard let body = JSONValue.parse(plain), let ufrag = body["ufrag"]?.string, let pwd = body["pwd"]?.string else {
            log("peer \(short(links[i].key)): \(type) without ICE credentials")
            return
        }
        let remotes = (body["candidates"]?.array ?? []).compactMap { $0.string.flatMap(ICECandidate.init(sdp:)) }
        if let port = body["wg_port"]?.number, port >= 1, port <= 65535 { links[i].remoteWireGuardPort = UInt16(port) }
        switch type {
        case "offer":
            guard gathered else { return }  // we answer once gathered; the offerer retries
            newSession(i, controlling: false)
            links[i].online = true
            start(i, ufrag: ufrag, pwd: pwd, remotes: remotes)
            send("answer", link: i, body: description(i, answering: ufrag))
            log("peer \(short(links[i].key)): offer received, answered (\(remotes.count) remote candidates)")
        case "answer":
            guard let agent = links[i].ice, agent.controlling, body["offer"]?.string == agent.localUfrag else { return }
            start(i, ufrag: ufrag, pwd: pwd, remotes: remotes)
            log("peer \(short(links[i].key)): answer received (\(remotes.count) remote candidates)")
        default:
            break
        }
    }

    private func start(_ i: Int, ufrag: String, pwd: String, remotes: [ICECandidate]) {
        links[i].ice!.setRemoteCredentials(ufrag: ufrag, password: pwd)
        for r in remotes where r.address.ip.isIPv4 { links[i].ice!.addRemote(r) }
        // Permissions on our relay for every remote address, so relayed checks get through.
        handOff(i)
        // One request per address: the server refuses a request whole when its policy forbids
        // one of the addresses in it (a remote's private host candidate, say).
        if var t = turn, t.phase == .allocated {
            for ip in Set(remotes.map(\.address.ip).filter(\.isIPv4)) { sendTURN(t.permit([ip], now: loop.now)) }
            turn = t
        }
    }

    // MARK: Gathering and the relay

    private func startGathering() {
        gathered = false
        relayCandidate = nil
        reflexive = nil
        closeRelay()
        relayAttempt = 0
        rankRelays()
    }

    /// Measures the round trip to every relay host that speaks UDP (one STUN binding each from
    /// the ICE socket, answers awaited 300 ms), then tries relays in `RelayOrder`.
    private func rankRelays() {
        ranking = [:]
        roundTrips = [:]
        var seen: Set<SocketAddress> = []
        for u in relayURLs where u.transport == .udp {
            guard let address = try? Resolver.resolve(u.host, port: u.port).first(where: { $0.ip.isIPv4 }), seen.insert(address).inserted else { continue }
            let tid = TransactionID.random()
            ranking[tid] = (u.host, address, loop.now)
            _ = try? STUNBinding.request(tid).withUnsafeBytes { b throws(SystemError) in try Sockets.sendDatagram(ice.raw, b, to: address) }
        }
        let generation = relayGeneration &+ 1
        relayGeneration = generation
        guard ranking.count > 1 else {
            relayURLs = RelayOrder.order(relayURLs, roundTrips: [:])
            ranking = [:]
            return tryNextRelay()
        }
        loop.schedule(after: 300_000_000) { [self] in
            guard generation == relayGeneration, !ranking.isEmpty || !roundTrips.isEmpty else { return }
            ranking = [:]
            relayURLs = RelayOrder.order(relayURLs, roundTrips: roundTrips)
            let measured = roundTrips.sorted { $0.value < $1.value }.map { "\($0.key) \(Double($0.value / 10_000) / 100) ms" }
            log("relays by round trip: \(measured.isEmpty ? "none answered" : measured.joined(separator: ", "))")
            tryNextRelay()
        }
    }

    /// A binding answer from a relay being ranked; true when it was one.
    private func rankingAnswer(_ p: UnsafeMutableRawBufferPointer, from: SocketAddress) -> Bool {
        guard !ranking.isEmpty, case .success(let m) = STUNMessage.parse(UnsafeRawBufferPointer(p)),
              let r = ranking[m.transactionID], r.address == from, STUNBinding.mappedAddress(m, tid: m.transactionID) != nil else { return false }
        ranking[m.transactionID] = nil
        roundTrips[r.host] = loop.now - r.sent
        return true
    }

    private func closeRelay() {
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

    private func tryNextRelay() {
        guard relayAttempt < relayURLs.count else {
            log("relay: no TURN server reachable (\(relayURLs.count) tried); direct paths only")
            finishGathering()
            return
        }
        let u = relayURLs[relayAttempt]
        relayAttempt += 1
        guard let creds = relayCredentials[u.text] else { return tryNextRelay() }
        relayDeadline = loop.now + 3_000_000_000
        if u.transport == .udp {
            guard let address = try? Resolver.resolve(u.host, port: u.port).first(where: { $0.ip.isIPv4 }) else { return tryNextRelay() }
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
                        tryNextRelay()
                    case .success(let c):
                        adoptStream(c, url: u, credentials: creds)
                    }
                }
            }
        } catch {
            tryNextRelay()
        }
    }

    private func adoptStream(_ c: ClientConnection, url: ServerURL, credentials: TURNClient.Credentials) {
        relay = .stream(c)
        relayTransport = "\(url.transport == .tls ? "tls" : "tcp") \(c.server)"
        streamFill = 0
        do {
            streamRegistration = try loop.register(fd: c.fdRaw, events: Epoll.input, handler: StreamHandler(tunnel: self))
        } catch {
            log("relay: cannot register \(url): \(error)")
            return tryNextRelay()
        }
        relayDeadline = loop.now + 3_000_000_000
        var t = TURNClient(credentials: credentials, reliable: true, software: "ferry-tunnel")
        let request = t.allocate(now: loop.now)
        turn = t
        sendTURN(request)
    }

    private func finishGathering() {
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
    private func sendTURN(_ bytes: [UInt8]) {
        switch relay {
        case .none: break
        case .udp(let server):
            _ = try? bytes.withUnsafeBytes { b throws(SystemError) in try Sockets.sendDatagram(ice.raw, b, to: server) }
        case .stream(let c):
            try? c.send(bytes, timeoutMilliseconds: 1000)
        }
    }

    private func turnEvents(_ events: [TURNClient.Event]) {
        for e in events {
            switch e {
            case .allocated(let relayed, let mapped, let lifetime):
                log("relay: allocated \(relayed) over \(relayTransport) (lifetime \(lifetime) s)")
                relayCandidate = ICECandidate(kind: .relay, address: relayed, base: mapped ?? SocketAddress(ip: .ipv4Any, port: icePort), localPreference: 65535)
                if case .udp = relay, let mapped { reflexive = ICECandidate(kind: .srflx, address: mapped, base: SocketAddress(ip: .ipv4Any, port: icePort)) }
                finishGathering()
            case .failed(let request, let code, let reason):
                if request == .allocate {
                    log("relay: allocate over \(relayTransport) failed: \(code == 0 ? reason : "\(code) \(reason)")")
                    closeRelay()
                    tryNextRelay()
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

    // MARK: Time

    private func tick() {
        let now = loop.now
        if var t = turn {
            let (events, sends) = t.tick(now: now)
            turn = t
            for s in sends { sendTURN(s) }
            turnEvents(events)
            if t.phase == .allocating && now > relayDeadline {
                log("relay: no answer over \(relayTransport) within 3 s")
                closeRelay()
                tryNextRelay()
            }
        }
        for i in links.indices {
            guard var agent = links[i].ice else {
                // A controlling side whose session failed (or never started) offers again.
                if gathered && welcomed && links[i].online && controlling(i) && now >= links[i].restartAt && now > links[i].lastOffer + 5_000_000_000 {
                    offer(i)
                }
                continue
            }
            let (sends, events) = agent.tick(now: now)
            links[i].ice = agent
            for s in sends { sendICE(s) }
            iceEvents(events, link: i)
            // An offer nobody answered is sent again.
            if agent.controlling && agent.remotePassword == nil && welcomed && links[i].online && now > links[i].lastOffer + 3_000_000_000 {
                offer(i)
            }
        }
        if now > lastHandoffCheck + 2_000_000_000 {
            lastHandoffCheck = now
            checkHandoffs()
        }
        if statusDirty || now > lastStatus + 1_000_000_000 { writeStatus() }
    }

    private func iceEvents(_ events: [ICEAgent.Event], link i: Int) {
        for e in events {
            switch e {
            case .selected(let route):
                if let old = links[i].route { byRemote[old.remote] = nil }
                if links[i].route != route { links[i].handoffRefused = false }
                links[i].route = route
                links[i].routeSince = loop.now
                byRemote[route.remote] = i
                log("peer \(short(links[i].key)): path \(route.throughRelay ? "RELAYED" : "DIRECT") \(route)" + (route.via == .relayed ? " via \(relayTransport)" : ""))
                if route.via == .relayed, var t = turn, t.channel(for: route.remote) == nil {
                    sendTURN(t.bindChannel(to: route.remote, now: loop.now).request)
                    turn = t
                }
                handOff(i)
            case .failed(let reason):
                takeBack(i, because: "ICE failed")
                log("peer \(short(links[i].key)): ICE failed (\(reason)); restarting")
                if let old = links[i].route { byRemote[old.remote] = nil }
                links[i].route = nil
                links[i].ice = nil
                links[i].restartAt = loop.now + 1_000_000_000
            }
            statusDirty = true
        }
    }

    /// An ICE message (check or answer) out: directly, or through our TURN allocation.
    private func sendICE(_ s: ICEAgent.Send) {
        switch s.via {
        case .direct:
            _ = try? s.bytes.withUnsafeBytes { b throws(SystemError) in try Sockets.sendDatagram(ice.raw, b, to: s.to) }
        case .relayed:
            guard let t = turn, t.phase == .allocated else { return }
            if let n = t.channel(for: s.to) {
                var frame = [UInt8](repeating: 0, count: 4 + s.bytes.count)
                frame.withUnsafeMutableBytes { ChannelData.writeHeader(channel: n, length: s.bytes.count, at: $0.baseAddress!) }
                frame.replaceSubrange(4..., with: s.bytes)
                if case .stream = relay { frame += [UInt8](repeating: 0, count: (4 - frame.count % 4) % 4) }
                sendTURN(frame)
            } else {
                sendTURN(t.sendIndication(to: s.to, data: s.bytes))
            }
        }
    }

    // MARK: Handing the direct path to WireGuard

    /// When ICE selects a direct pair to the peer's **host** address (no NAT between: one LAN,
    /// one VPC, routed networks), WireGuard can reach the peer's own WireGuard port at that
    /// address: the agent points WireGuard there and steps off the path, so a direct tunnel costs
    /// nothing over WireGuard alone (each hop through a userspace agent costs ~45 µs on the test
    /// VMs: docs/benchmarks.md). Behind NAT the peer's WireGuard port has no known mapping, so
    /// the agent stays on the path. The handoff is checked: if WireGuard sends and hears nothing
    /// back within 5 s, the agent takes the path back and does not hand it off again until the
    /// route changes. ICE keeps checking the pair; when it is lost the agent takes the path back.
    private func handOff(_ i: Int) {
        guard let wg = wireGuard, let route = links[i].route else { return }
        // The signalled kind (a pair first learned as peer-reflexive may be a host candidate).
        let kind = links[i].ice?.remotes.first { $0.address == route.remote }?.kind ?? route.remoteKind
        let wanted: SocketAddress? = route.via == .direct && kind == .host && !links[i].handoffRefused
            ? links[i].remoteWireGuardPort.map { SocketAddress(ip: route.remote.ip, port: $0) } : nil
        guard wanted != links[i].handedOff else { return }
        guard let endpoint = wanted else { return takeBack(i, because: "the path changed") }
        links[i].handedOff = endpoint
        links[i].handoffTransfer = nil
        let key = links[i].key, log = self.log
        runInBackground { [self] in
            do {
                try wg.setEndpoint(peer: key, endpoint)
                log("peer \(short(key)): path DIRECT handed to WireGuard (endpoint \(endpoint))")
                let t = WireGuardInterface.transfer(wg.name)?[key]
                loop.execute { [self] _ in
                    guard let j = byKey[key], links[j].handedOff == endpoint, let t else { return }
                    links[j].handoffTransfer = (t.rx, t.tx, loop.now)
                }
            } catch {
                log("peer \(short(key)): cannot hand the path to WireGuard: \(error)")
            }
        }
        statusDirty = true
    }

    /// Points WireGuard back at the agent's local endpoint for the peer.
    private func takeBack(_ i: Int, because why: String) {
        guard let wg = wireGuard, links[i].handedOff != nil else { return }
        links[i].handedOff = nil
        links[i].handoffTransfer = nil
        let key = links[i].key, local = SocketAddress(ip: IPAddress("127.0.0.1")!, port: links[i].proxyPort), log = self.log
        runInBackground {
            try? wg.setEndpoint(peer: key, local)
            log("peer \(String(key.prefix(8)))…: path taken back from WireGuard (\(why))")
        }
        statusDirty = true
    }

    /// Checks handed-off paths (about every 2 s, from `tick`): WireGuard sent, nothing came back.
    private func checkHandoffs() {
        guard let wg = wireGuard, links.contains(where: { $0.handoffTransfer != nil }) else { return }
        runInBackground { [self] in
            guard let now = WireGuardInterface.transfer(wg.name) else { return }
            loop.execute { [self] _ in
                for i in links.indices {
                    guard let before = links[i].handoffTransfer, let t = now[links[i].key] else { continue }
                    if t.rx > before.rx {
                        links[i].handoffTransfer = (t.rx, t.tx, loop.now)  // works: measure from here
                    } else if t.tx > before.tx && loop.now > before.at + 5_000_000_000 {
                        links[i].handoffRefused = true
                        takeBack(i, because: "WireGuard sent \(t.tx - before.tx) bytes to the peer directly and got nothing back in 5 s")
                    }
                }
            }
        }
    }

    private func runInBackground(_ body: @escaping @Sendable () -> Void) {
        do { try Threads.detach(name: "ferry-wg", body) } catch { body() }
    }

    // MARK: Packets

    public func handleEvent(_ events: UInt32, loop: EventLoop) { readICE() }

    /// The ICE socket: TURN from the relay server, checks and data from peers.
    func readICE() {
        var relayServer: SocketAddress?
        if case .udp(let s) = relay { relayServer = s }
        while true {
            guard case .done(let n)? = try? batch.receive(from: ice.raw), n > 0 else { return }
            for j in 0..<n {
                guard let from = batch.source(j) else { continue }
                let p = UnsafeMutableRawBufferPointer(start: batch.data(j), count: batch.length(j))
                if from == relayServer {
                    fromRelayServer(p)
                } else if !ranking.isEmpty && rankingAnswer(p, from: from) {
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
            guard let (channel, length) = ChannelData.parse(UnsafeRawBufferPointer(p)), let peer = channelPeers[channel] else { return }
            fromPeer(UnsafeMutableRawBufferPointer(rebasing: p[4..<(4 + length)]), from: peer, via: .relayed)
            return
        }
        guard case .success(let m) = STUNMessage.parse(UnsafeRawBufferPointer(p)) else { return }
        if m.method == STUN.Method.data && m.messageClass == .indication {
            guard let peer = m.xorAddress(STUN.Attribute.xorPeerAddress), let data = m.attribute(STUN.Attribute.data) else { return }
            fromPeer(UnsafeMutableRawBufferPointer(mutating: data), from: peer, via: .relayed)
            return
        }
        guard var t = turn else { return }
        let (events, sends) = t.receive(m, now: loop.now)
        turn = t
        for s in sends { sendTURN(s) }
        turnEvents(events)
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
        links[i].rxPackets &+= 1
        links[i].rxBytes &+= UInt64(p.count)
        if links[i].out.isFull { flushLink(i) }
        links[i].out.append(p.baseAddress!, p.count, to: links[i].deliverTo)
        links[i].sentToWireGuard = true
    }

    private func linkKnowing(_ address: SocketAddress) -> Int? {
        links.indices.first { links[$0].ice?.remotes.contains { $0.address == address } ?? false }
    }

    private func check(_ m: STUNMessage, from: SocketAddress, via: ICEVia) {
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
                guard let route = links[i].route else {
                    links[i].dropped &+= 1
                    continue
                }
                links[i].txPackets &+= 1
                links[i].txBytes &+= UInt64(length)
                let data = batch.data(j)
                if iceOut.isFull { iceOut.flush(ice.raw) }
                switch route.via {
                case .direct:
                    iceOut.append(data, length, to: route.remote)
                case .relayed:
                    forwardRelayed(data, length, to: route.remote, link: i)
                }
            }
            iceOut.flush(ice.raw)
            if n < batch.capacity { return }
        }
    }

    private func forwardRelayed(_ data: UnsafeMutableRawPointer, _ length: Int, to peer: SocketAddress, link i: Int) {
        guard let channel = peerChannels[peer] else {
            // Until the channel is bound: a Send indication (allocates; a few packets at most).
            if let t = turn, t.phase == .allocated { sendTURN(t.sendIndication(to: peer, data: Array(UnsafeRawBufferPointer(start: data, count: length)))) }
            return
        }
        switch relay {
        case .udp(let server):
            // The ChannelData header goes into the slot's headroom: no copy.
            let start = data - ChannelData.headerLength
            ChannelData.writeHeader(channel: channel, length: length, at: start)
            iceOut.append(start, length + ChannelData.headerLength, to: server)
        case .stream(let c):
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
        guard case .stream(let c) = relay else { return }
        // Every return sends what is queued while the bytes it points to are still in place.
        defer { flush() }
        while true {
            let n = streamInput.withUnsafeMutableBytes { c.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[streamFill...])) }
            guard let n else { break }
            if n == 0 {
                log("relay: \(relayTransport) closed by the server; gathering again")
                startGathering()
                return
            }
            streamFill += n
            var consumed = 0
            while true {
                let next = streamInput.withUnsafeBytes { StreamFraming.next(UnsafeRawBufferPointer(rebasing: $0[consumed..<streamFill])) }
                switch next {
                case .stun(let length):
                    streamInput.withUnsafeMutableBytes { fromRelayServer(UnsafeMutableRawBufferPointer(rebasing: $0[consumed..<(consumed + length)])) }
                    consumed += length
                    continue
                case .channelData(_, let payload, let frameLength):
                    streamInput.withUnsafeMutableBytes { fromRelayServer(UnsafeMutableRawBufferPointer(rebasing: $0[consumed..<(consumed + 4 + payload)])) }
                    consumed += frameLength
                    continue
                case .invalid:
                    log("relay: unframeable bytes on \(relayTransport); reconnecting")
                    startGathering()
                    return
                case .incomplete:
                    break
                }
                break
            }
            // What was queued for WireGuard points into `streamInput`: send it before the
            // partial frame left over is moved to the front over it (it was sent after, and
            // packets arrived altered whenever a read ended inside a frame).
            flush()
            if consumed > 0 {
                streamInput.withUnsafeMutableBytes { b in
                    b.baseAddress!.copyMemory(from: b.baseAddress! + consumed, byteCount: streamFill - consumed)
                }
                streamFill -= consumed
            }
            if streamFill == streamInput.count {
                log("relay: frame larger than the buffer; reconnecting")
                startGathering()
                return
            }
        }
    }

    private func flushLink(_ i: Int) {
        links[i].out.flush(links[i].proxy.raw)
        links[i].sentToWireGuard = false
    }

    func flush() {
        if iceOut.count > 0 { iceOut.flush(ice.raw) }
        for i in links.indices where links[i].sentToWireGuard { flushLink(i) }
    }

    // MARK: Status

    public static func defaultStatusFile(interface: String?) -> String {
        "/run/ferry/tunnel-\(interface ?? "peers").json"
    }

    func status() -> JSONValue {
        let now = loop.now
        return .object([
            ("interface", config.interface.map { .string($0) } ?? .null),
            ("key", .string(publicKey)),
            ("signaling", .string(welcomed ? "connected" : "disconnected")),
            ("relay", .string(relayTransport)),
            ("relayed_address", relayCandidate.map { .string("\($0.address)") } ?? .null),
            ("ice_port", .number(Double(icePort))),
            ("uptime_seconds", .number(Double((now - started) / 1_000_000_000))),
            ("peers", .array(links.map { l in
                let path: String = l.route.map { $0.throughRelay ? "relayed" : "direct" } ?? (l.online ? "connecting" : "offline")
                let handedOff: JSONValue = l.handedOff.map { .string("\($0)") } ?? .null
                var m: [(String, JSONValue)] = [("key", .string(l.key)), ("path", .string(path)),
                                                ("local_endpoint", .string("127.0.0.1:\(l.proxyPort)")), ("online", .bool(l.online)),
                                                ("wireguard_endpoint", handedOff)]
                if let r = l.route {
                    m.append(("route", .string("\(r)")))
                    m.append(("remote", .string("\(r.remote)")))
                    m.append(("since_seconds", .number(Double((now - l.routeSince) / 1_000_000_000))))
                    if let pair = l.ice?.selectedPair { m.append(("rtt_ms", .number(Double(pair.rtt / 10_000) / 100))) }
                }
                m += [("rx_packets", .number(Double(l.rxPackets))), ("rx_bytes", .number(Double(l.rxBytes))),
                      ("tx_packets", .number(Double(l.txPackets))), ("tx_bytes", .number(Double(l.txBytes))),
                      ("dropped_no_path", .number(Double(l.dropped)))]
                return .object(m)
            })),
        ])
    }

    private func writeStatus() {
        statusDirty = false
        lastStatus = loop.now
        let path = config.statusFile ?? Self.defaultStatusFile(interface: config.interface)
        Files.replace(path, contents: status().encoded() + [10])
    }
}

/// A link's local socket on the loop.
final class ProxyHandler: EventHandler {
    unowned let tunnel: Tunnel
    let index: Int
    init(tunnel: Tunnel, index: Int) {
        self.tunnel = tunnel
        self.index = index
    }
    func handleEvent(_ events: UInt32, loop: EventLoop) { tunnel.readProxy(index) }
}

/// The TURN stream (TCP or TLS) on the loop.
final class StreamHandler: EventHandler {
    unowned let tunnel: Tunnel
    init(tunnel: Tunnel) { self.tunnel = tunnel }
    func handleEvent(_ events: UInt32, loop: EventLoop) { tunnel.readStream() }
}

/// Hands a value made on a helper thread to the loop thread (which alone uses it afterwards).
final class UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
