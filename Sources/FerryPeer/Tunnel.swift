import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import FerryTLS
import FerryWire
import Dispatch
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
    /// Signaling servers, tried in order: the agent moves to the next when one is lost.
    public var signals: [ServerURL]
    public var token: String
    public var caFile: String?
    public var insecure = false
    /// The UDP port of the agent's ICE socket (0: any).
    public var port: UInt16 = 0
    /// Only relayed candidates (as WebRTC's iceTransportPolicy "relay").
    public var relayOnly = false
    /// Keep every packet on the agent's local endpoints: no shared port, no native relay.
    public var proxy = false
    public var statusFile: String?
    /// What must survive a restart: the newest sealed message accepted per peer and type
    /// (`SealedEnvelope.highWater`), so an envelope opened before the restart is not opened again.
    public var stateFile: String?

    public init(signals: [ServerURL], token: String) {
        self.signals = signals
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
        /// WireGuard's packets while ICE confirms the first path (HeldPackets).
        var held = HeldPackets()
        var sentToWireGuard = false
        /// The peer's WireGuard listen port (from its offer or answer).
        var remoteWireGuardPort: UInt16?
        /// Whether WireGuard talks to the peer itself, and at what endpoint (see `handOff`).
        var endpoint = EndpointHandoff()
        var handedOff: SocketAddress? { endpoint.handedOff }
        /// The native relay the peer offered (its offer's or answer's `native`).
        var remoteNative: String?
        /// This link's end of a native-relay session (Tunnel+Native).
        var native: NativeBinding?
        var nativeRefused = false
        /// Or over the relay's stream side, when UDP does not reach it (Tunnel+NativeStream).
        var nativeStream: NativeStream?
        var nativeConnecting = false
    }

    public let config: TunnelConfig
    let loop: EventLoop
    let engine: Engine
    let log: @Sendable (String) -> Void
    let publicKey: String
    let publicKeyBytes: [UInt8]
    var sealer: SealedEnvelope
    /// Logged once: the state file could not be written (Tunnel+State).
    var stateWriteFailed = false
    let signal: SignalConnection
    let wireGuard: WireGuardInterface?
    /// Every `wg` command, in the order the loop decided them (Tunnel+Path `runInBackground`).
    let wireGuardQueue = DispatchQueue(label: "ferry-wg")

    let ice: FileDescriptor
    let icePort: UInt16
    var iceRegistration: Registration?
    let batch = UDPReceiveBatch(capacity: 64, slotSize: 2048, headroom: ChannelData.headerLength)
    let iceOut = UDPSendQueue(capacity: 128)

    /// WireGuard's port, shared for native-relay binds (Tunnel+Native); nil in proxy mode.
    var shared: SharedPort?
    var sharedRegistration: Registration?
    var sharedPortState = "off"
    /// WireGuard's own server-reflexive address (a STUN binding from the shared port), and the
    /// binding that asks for it.
    var sharedReflexive: ICECandidate?
    var sharedSTUN: TransactionID?
    var nativeRelays: [NativeRelay] = []
    /// The first native relay's stream side (`wgrelays:`), and whether its UDP port answers
    /// WireGuard's port (nil: being probed; Tunnel+NativeStream).
    var nativeStreamURL: ServerURL?
    var nativeUDP: Bool?
    var nativeProbe: TransactionID?

    var links: [Link] = []
    var byKey: [String: Int] = [:]
    var byRemote: [SocketAddress: Int] = [:]

    /// The TURN relay: one allocation shared by every link (AgentRelay decides, Tunnel+Relay
    /// carries it out), and the TCP or TLS connection it runs on when not over UDP.
    var relay: AgentRelay
    var relayStream: ClientConnection?
    var streamRegistration: Registration?
    let streamReader = StreamFrameReader()
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
    func stop(_ signal: Int32) {
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
        guard var sealer = SealedEnvelope(privateKey: cfg.privateKey) else { throw Failure(description: "the private key is not an X25519 key") }
        if let saved = Files.read(config.stateFile ?? Self.defaultStateFile(interface: config.interface)) {
            sealer.restore(Self.readMarks(String(decoding: saved, as: UTF8.self)))
        }
        self.sealer = sealer
        publicKeyBytes = sealer.publicKey
        publicKey = Base64.std(sealer.publicKey)
        do {
            engine = try Engine(workers: 1, pin: false)
            loop = engine.loops[0]
            ice = try Sockets.udpClient(local: SocketAddress(ip: .ipv4Any, port: config.port))
            icePort = try Sockets.localAddress(ice.raw).port
            relay = AgentRelay(icePort: icePort) { u in try? Resolver.resolve(u.host, port: u.port).first(where: { $0.ip.isIPv4 }) }
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
        signal = SignalConnection(urls: config.signals, privateKey: cfg.privateKey, token: config.token, caFile: config.caFile,
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

    func setUp() {
        do {
            iceRegistration = try loop.register(fd: ice.raw, events: Epoll.input, handler: self)
            for i in links.indices {
                links[i].registration = try loop.register(fd: links[i].proxy.raw, events: Epoll.input, handler: TunnelSocket(tunnel: self) { $0.readProxy(i) })
            }
        } catch {
            log("tunnel: cannot register sockets: \(error)")
        }
        openSharedPort()
        loop.onIterationEnd { [self] in flush() }
        scheduleTick()
    }

    func scheduleTick() {
        loop.schedule(after: ICEAgent.pace) { [self] in
            tick()
            scheduleTick()
        }
    }

    // MARK: Time

    func tick() {
        let now = loop.now
        performRelay(relay.tick(now: now))
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
        tickNative(now: now)
        if now > lastHandoffCheck + 2_000_000_000 {
            lastHandoffCheck = now
            checkHandoffs()
            checkEndpoints()
        }
        if statusDirty || now > lastStatus + 1_000_000_000 { writeStatus() }
    }

}

/// One of the tunnel's sockets on the loop (a link's local socket, the TURN stream, the shared
/// port, a native-relay stream) and what reads it; one call per readiness event, not per packet.
/// `unowned`: the tunnel lives as long as the process (`Tunnel.run` never returns, `stop` exits),
/// so it outlives its loop and every handler registered there.
final class TunnelSocket: EventHandler {
    unowned let tunnel: Tunnel
    let readable: (Tunnel) -> Void
    init(tunnel: Tunnel, _ readable: @escaping (Tunnel) -> Void) {
        self.tunnel = tunnel
        self.readable = readable
    }
    func handleEvent(_ events: UInt32, loop: EventLoop) { readable(tunnel) }
}

/// Hands a value made on a helper thread to the loop thread (which alone uses it afterwards).
final class UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
