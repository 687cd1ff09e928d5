import FerryCore
import TOMLKit
import FerrySystem

/// The whole configuration of one `ferryd`: parsed from one TOML file, validated, then
/// overridden by environment variables and command-line flags. Every key is listed with a
/// comment in `config/ferry.example.toml` and in `docs/configuration.md`.
public struct FerryConfig: Sendable, Equatable {
    public enum LogLevel: String, CaseIterable, Sendable {
        case trace, debug, info, notice, warning, error, critical
    }

    public enum LogFormat: String, CaseIterable, Sendable {
        case text, json
    }

    public enum Transport: String, CaseIterable, Sendable {
        /// Datagrams.
        case udp
        /// A byte stream that may carry TURN (STUN framing), TLS or HTTP, told apart by its first bytes.
        case tcp
        /// TLS first; inside, TURN or HTTP by ALPN (`stun.turn`, `http/1.1`) or by the first bytes.
        case tls
    }

    /// What a listener serves.
    public enum Service: String, CaseIterable, Sendable {
        /// STUN (RFC 8489) and TURN (RFC 8656) for clients: the relay's front door.
        case turn
        /// Plain UDP forwarding of every datagram to `forward_to`: the engine benchmark mode.
        case forward
        /// The native WireGuard relay (docs/relay-protocol.md): UDP only, served by one worker.
        case relay
    }

    public struct Server: Sendable, Equatable {
        /// Worker threads; 0 means one per available core.
        public var workers = 0
        public var pinWorkers = true
        /// How long a graceful stop waits for sessions to finish.
        public var drainSeconds = 10
        public var software = "ferry"
        /// Where ferryd keeps state that must survive restarts (the nonce key, later the
        /// signaling key). "" keeps it in memory only.
        public var stateDirectory = ""
        /// The file is for a lab or a test: `ferry config check` accepts documentation addresses
        /// and example names in it (Preflight.placeholders).
        public var lab = false
    }

    /// A static TURN user: a password, or the precomputed MD5(user:realm:password) key in hex.
    public struct TURNUser: Sendable, Equatable {
        public var name: String
        public var password: String?
        public var key: String?

        public init(name: String, password: String?, key: String?) {
            self.name = name
            self.password = password
            self.key = key
        }
    }

    public struct TURN: Sendable, Equatable {
        public var realm = "ferry"
        public var relayIPv4: IPAddress?
        public var relayIPv6: IPAddress?
        public var externalIPv4: IPAddress?
        public var externalIPv6: IPAddress?
        public var portMin = 49152
        public var portMax = 65535
        public var defaultLifetime = 600
        public var maxLifetime = 3600
        public var nonceLifetime = 600
        public var nonceSecret = ""
        public var maxAllocations = 10000
        public var maxAllocationsPerUser = 10
        public var maxPermissionsPerAllocation = 16
        public var maxChannelsPerAllocation = 16
        public var bandwidthPerAllocation = 0
        public var bandwidthBurst = 0
        public var unauthorizedPerSecond = 5
        public var unauthorizedBurst = 20
        public var strictChannelNumbers = false
        /// TURN to TURN inside ferryd: allocations reach each other without the kernel (on one
        /// worker directly, across workers in batches with this many bytes in flight to each).
        public var shortCircuit = true
        public var shortCircuitHandoffBytes = 4 << 20
        /// SO_RCVBUF/SO_SNDBUF of each relayed socket (0 = kernel default).
        public var relayBufferBytes = 1 << 20
        public var staticAuthSecrets: [String] = []
        public var users: [TURNUser] = []
    }

    public struct TLSCertificate: Sendable, Equatable {
        public var certificate: String
        public var key: String
    }

    public struct TLS: Sendable, Equatable {
        /// Certificate chains and keys; the first is the default, the others chosen by SNI.
        public var certificates: [TLSCertificate] = []
        /// Generate a self-signed certificate at start (the development default).
        public var selfSigned = false
        public var minVersion = "1.2"
        public var handshakeTimeoutSeconds = 10
        public var handshakesPerSecond = 20
        public var handshakeBurst = 40
    }

    public struct Stream: Sendable, Equatable {
        public var idleTimeoutSeconds = 600
        public var requestTimeoutSeconds = 10
        public var writeBufferBytes = 262_144
        public var maxConnections = 20_000
        public var maxConnectionsPerSource = 1024
    }

    public struct SignalRelay: Sendable, Equatable {
        public var region: String
        public var urls: [String]
        public var secret: String
    }

    public struct Signal: Sendable, Equatable {
        public var enabled = false
        public var allowPlaintext = false
        public var serverKey = ""
        public var tokenSecrets: [String] = []
        public var jwksFile = ""
        public var jwksURL = ""
        public var jwksCAFile = ""
        public var jwksTimeoutSeconds = 10
        public var jwtIssuer = ""
        public var jwtAudience = ""
        public var networkClaim = "ferry_network"
        public var peerClaim = ""
        public var maxPayload = 16384
        public var maxMessage = 65536
        public var messagesPerSecond = 50
        public var messageBurst = 100
        public var bytesPerSecond = 262_144
        public var queueMessages = 256
        public var maxSubscriptionsPerPeer = 4096
        public var maxSubscriptionsPerNetwork = 100_000
        public var maxSubscriptions = 400_000
        public var authTimeoutSeconds = 10
        public var preauthMessages = 4
        public var preauthBytes = 32768
        public var queueBytes = 1 << 20
        public var queueBytesTotal = 256 << 20
        public var registrationsPerSecond = 1
        public var registrationBurst = 5
        public var pingIntervalSeconds = 20
        public var relayTTLSeconds = 86400
        public var selfRelayURLs: [String] = []
        public var relays: [SignalRelay] = []
        public var nats = NATS()
    }

    /// `[signal.nats]`: signaling across instances (docs/deployment.md). No servers: the
    /// in-process directory, one instance per network.
    public struct NATS: Sendable, Equatable {
        public var servers: [String] = []
        public var subjectPrefix = "ferry"
        /// This instance's name in subjects and heartbeats ("": made up per process).
        public var instance = ""
        public var user = ""
        public var password = ""
        public var token = ""
        public var credentialsFile = ""
        public var caFile = ""
        public var certFile = ""
        public var keyFile = ""
        public var maxPending = 65536
        public var subscriptionPending = 65536
        public var reconnectWaitMillis = 250
    }

    public struct Policy: Sendable, Equatable {
        /// CIDRs a relay may reach even though the defaults deny them (peers inside a VPC).
        public var allow: [String] = []
        /// CIDRs a relay never reaches; overrides everything.
        public var deny: [String] = []
    }

    public struct Log: Sendable, Equatable {
        public var level = LogLevel.info
        public var format = LogFormat.text
        /// One line per ended allocation or signaling session (`ferryd.session`).
        public var sessions = true
    }

    public enum XDPMode: String, Sendable, Equatable, CaseIterable {
        case off, generic, native
    }

    public struct Engine: Sendable, Equatable {
        /// Datagrams per recvmmsg/sendmmsg.
        public var batchSize = 64
        /// Largest datagram kept; longer ones are cut and dropped.
        public var maxDatagram = 2048
        /// 8 MiB holds 70 ms of a 1 Gbit/s burst of 1200-byte datagrams (~6800 packets counting
        /// the kernel's per-skb overhead), enough to ride out a worker's scheduling hiccup.
        public var udpReceiveBuffer = 8 << 20
        public var udpSendBuffer = 8 << 20
        /// Read GSO trains as one coalesced buffer (UDP_GRO) where the service allows it.
        public var gro = true
        /// Send runs of equal-size datagrams to one destination as one UDP_SEGMENT (GSO) train.
        public var gso = true
        /// The XDP fast path (docs/xdp.md): off, or the mode it attaches in.
        public var xdp: XDPMode = .off
        /// Interfaces the XDP program attaches to (by name).
        public var xdpInterfaces: [String] = []
        /// Native-relay sessions the kernel path holds at once (its maps are sized for them).
        public var xdpSessions = 16384
        /// TURN channels the kernel path holds at once (all workers together).
        public var xdpChannels = 16384
    }

    public struct Admin: Sendable, Equatable {
        /// nil disables the admin listener.
        public var address: SocketAddress? = SocketAddress("127.0.0.1:9090")
        public var maxConnections = 64
        public var maxConnectionsPerSource = 8
        public var requestTimeoutSeconds = 10
        /// The bearer token the admin API's control and session endpoints require ("": those
        /// endpoints refuse every caller); `tokenFile` wins when set.
        public var token = ""
        public var tokenFile = ""
        /// The status page's history: one sample per this many seconds, 30 of them kept.
        public var statusIntervalSeconds = 10
    }

    public struct Listener: Sendable, Equatable {
        /// Matches a systemd socket's FileDescriptorName=.
        public var name: String
        public var transport: Transport
        public var address: SocketAddress
        public var service: Service
        public var forwardTo: SocketAddress?
    }

    public var server = Server()
    public var log = Log()
    public var engine = Engine()
    public var admin = Admin()
    public var listeners: [Listener] = []
    public var turn = TURN()
    public var policy = Policy()
    public var tls = TLS()
    public var stream = Stream()
    public var signal = Signal()
    public var relay = Relay()

    public init() {}

    /// The built-in development default: loopback only.
    /// The built-in development default: STUN/TURN on 127.0.0.1:3478 with relays on loopback,
    /// admin on 127.0.0.1:9090. ferryd adds a generated user and shared secret and prints them.
    public static var development: FerryConfig {
        var c = FerryConfig()
        c.listeners = [
            Listener(name: "turn-udp", transport: .udp, address: SocketAddress("127.0.0.1:3478")!, service: .turn, forwardTo: nil),
            Listener(name: "turn-tcp", transport: .tcp, address: SocketAddress("127.0.0.1:3478")!, service: .turn, forwardTo: nil),
            Listener(name: "turn-tls", transport: .tls, address: SocketAddress("127.0.0.1:5349")!, service: .turn, forwardTo: nil),
            Listener(name: "relay-udp", transport: .udp, address: SocketAddress("127.0.0.1:3479")!, service: .relay, forwardTo: nil),
        ]
        c.tls.selfSigned = true
        c.signal.enabled = true
        c.signal.allowPlaintext = true
        c.signal.selfRelayURLs = ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp",
                                  "turns:127.0.0.1:5349?transport=tcp", "wgrelay:127.0.0.1:3479",
                                  "wgrelays:127.0.0.1:5349"]
        c.turn.realm = "ferry.dev"
        c.turn.relayIPv4 = IPAddress("127.0.0.1")
        // Only local processes can reach a server on 127.0.0.1, and they can reach loopback
        // anyway: relaying to loopback peers gives them nothing new, and lets a developer try
        // relaying on one machine. Every real config starts from deny.
        c.policy.allow = ["127.0.0.0/8"]
        return c
    }

    /// `a.b.c.d/n`, `x::/n` or a bare address.
    public static func isCIDR(_ text: String) -> Bool {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let ip = IPAddress(String(parts[0])) else { return false }
        if parts.count == 1 { return true }
        guard let p = Int(parts[1]) else { return false }
        return (0...(ip.isIPv4 ? 32 : 128)).contains(p)
    }

    /// The effective worker count.
    public var workerCount: Int { server.workers > 0 ? server.workers : Engine.cores }
}

extension FerryConfig.Engine {
    static var cores: Int { FerrySystem.Engine.availableCores }
}
