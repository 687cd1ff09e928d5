/// Every config key in one table: its documentation (rendered as the table in
/// docs/configuration.md by `ferry config keys`), whether SIGHUP applies it, and how to compare
/// and keep its value. A reload is planned from this table alone, so no key can be silently
/// ignored: each changed key is either applied or logged as needing a restart, by name.
public struct ConfigKey: Sendable {
    public enum Reload: Sendable {
        /// SIGHUP applies it.
        case applied
        /// Read at start only; a changed value is logged as needing a restart and stays as it was.
        case restart
    }

    /// One key of a row.
    public struct Field: Sendable {
        public let name: String
        /// A TOML value unlike the default (with any companion keys it needs to be valid): what
        /// the test that walks every key sets. `ConfigKey.remove` removes a companion.
        public let example: [(String, String)]
        let differs: @Sendable (FerryConfig, FerryConfig) -> Bool
        let keep: @Sendable (inout FerryConfig, FerryConfig) -> Void

        public static func field<T: Equatable & Sendable>(_ name: String, _ path: WritableKeyPath<FerryConfig, T> & Sendable,
                                                           example: [(String, String)]) -> Field {
            Field(name: name, example: example, differs: { $0[keyPath: path] != $1[keyPath: path] },
                  keep: { $0[keyPath: path] = $1[keyPath: path] })
        }

        /// A key inside an array of tables: compared through `project`, kept as the whole array.
        public static func field<T: Sendable, U: Equatable & Sendable>(_ name: String, _ path: WritableKeyPath<FerryConfig, T> & Sendable,
                                                            _ project: @escaping @Sendable (T) -> U, example: [(String, String)]) -> Field {
            Field(name: name, example: example, differs: { project($0[keyPath: path]) != project($1[keyPath: path]) },
                  keep: { $0[keyPath: path] = $1[keyPath: path] })
        }
    }

    /// An example value meaning "leave this companion key out".
    public static let remove = "<remove>"

    public let fields: [Field]
    public let defaultText: String
    public let allowed: String
    public let override: String
    public let reload: Reload
    public let meaning: String

    init(default defaultText: String, allowed: String, override: String, reload: Reload, meaning: String, _ fields: [Field]) {
        self.fields = fields
        self.defaultText = defaultText
        self.allowed = allowed
        self.override = override
        self.reload = reload
        self.meaning = meaning
    }

    public var names: [String] { fields.map(\.name) }
}

extension FerryConfig {
    /// What a reload does with a new configuration.
    public struct ReloadPlan: Sendable {
        /// Changed keys that SIGHUP applies.
        public var applied: [String] = []
        /// Changed keys that need a restart: their running values stay in `effective`.
        public var needsRestart: [String] = []
        /// The configuration to run with: the new one, with restart-only keys as they were.
        public var effective: FerryConfig
    }

    /// Compares the running configuration with the next one, key by key, through `keys`.
    public static func reloadPlan(running: FerryConfig, next: FerryConfig) -> ReloadPlan {
        var plan = ReloadPlan(effective: next)
        for row in keys {
            for field in row.fields where field.differs(running, next) {
                switch row.reload {
                case .applied:
                    plan.applied.append(field.name)
                case .restart:
                    plan.needsRestart.append(field.name)
                    field.keep(&plan.effective, running)
                }
            }
        }
        return plan
    }

    /// The table of keys as Markdown: the one in docs/configuration.md.
    public static func keysMarkdown() -> String {
        var out = "| key | default | allowed | override | reload | meaning |\n|---|---|---|---|---|---|\n"
        for row in keys {
            let names = row.names.map { "`\($0)`" }.joined(separator: ", ")
            out += "| \(names) | \(row.defaultText) | \(row.allowed) | \(row.override) | \(row.reload == .applied ? "yes" : "no") | \(row.meaning) |\n"
        }
        return out
    }

    /// Every key the parser reads (array-of-tables keys written `name[].key`), found by parsing a
    /// file with one of each array; for the test that holds the table and the parser together.
    public static func parsedKeys() -> Set<String> {
        let text = """
            [[listener]]
            [[turn.user]]
            [[tls.certificate]]
            [[signal.relay]]
            [signal.nats]
            """
        let sink = ConfigReader.IssueSink()
        _ = try? parse(text, sink: sink)
        return sink.asked
    }

    /// Every documented key, in table order.
    public static let keys: [ConfigKey] = coreKeys + natsKeys + relayKeys

    static let coreKeys: [ConfigKey] = [
        ConfigKey(default: "0", allowed: "0–1024", override: "`FERRY_WORKERS`, `--workers`", reload: .restart,
                  meaning: "worker threads; 0 = one per available core", [
            .field("server.workers", \.server.workers, example: [("server.workers", "3")]),
        ]),
        ConfigKey(default: "true", allowed: "bool", override: "", reload: .restart,
                  meaning: "pin worker n to CPU n", [
            .field("server.pin_workers", \.server.pinWorkers, example: [("server.pin_workers", "false")]),
        ]),
        ConfigKey(default: "10", allowed: "0–3600", override: "", reload: .applied,
                  meaning: "how long SIGTERM waits for sessions to end", [
            .field("server.drain_seconds", \.server.drainSeconds, example: [("server.drain_seconds", "30")]),
        ]),
        ConfigKey(default: "\"ferry\"", allowed: "string", override: "", reload: .restart,
                  meaning: "name in STUN SOFTWARE and HTTP headers (\"\" sends none)", [
            .field("server.software", \.server.software, example: [("server.software", "\"relay\"")]),
        ]),
        ConfigKey(default: "\"\"", allowed: "path", override: "", reload: .restart,
                  meaning: "state kept across restarts (`nonce.key`); \"\" keeps it in memory", [
            .field("server.state_directory", \.server.stateDirectory, example: [("server.state_directory", "\"/var/lib/ferry\"")]),
        ]),
        ConfigKey(default: "false", allowed: "bool", override: "", reload: .applied,
                  meaning: "a lab or test file: `ferry config check` accepts documentation addresses (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) and example.org/.com/.net names; placeholder secrets are refused all the same", [
            .field("server.lab", \.server.lab, example: [("server.lab", "true")]),
        ]),
        ConfigKey(default: "\"info\"", allowed: "trace, debug, info, notice, warning, error, critical", override: "`FERRY_LOG_LEVEL`, `--log-level`", reload: .applied,
                  meaning: "", [
            .field("log.level", \.log.level, example: [("log.level", "\"debug\"")]),
        ]),
        ConfigKey(default: "\"text\"", allowed: "text, json", override: "`FERRY_LOG_FORMAT`, `--log-format`", reload: .restart,
                  meaning: "json: one object per line", [
            .field("log.format", \.log.format, example: [("log.format", "\"json\"")]),
        ]),
        ConfigKey(default: "true", allowed: "bool", override: "", reload: .restart,
                  meaning: "one `ferryd.session` line per ended allocation or signaling session (info level)", [
            .field("log.sessions", \.log.sessions, example: [("log.sessions", "false")]),
        ]),
        ConfigKey(default: "64", allowed: "1–1024", override: "", reload: .restart,
                  meaning: "datagrams per recvmmsg/sendmmsg", [
            .field("engine.batch_size", \.engine.batchSize, example: [("engine.batch_size", "32")]),
        ]),
        ConfigKey(default: "2048", allowed: "576–65535", override: "", reload: .restart,
                  meaning: "longer datagrams are dropped (`truncated`)", [
            .field("engine.max_datagram", \.engine.maxDatagram, example: [("engine.max_datagram", "1500")]),
        ]),
        ConfigKey(default: "8388608", allowed: "0–2^30", override: "", reload: .restart,
                  meaning: "SO_RCVBUF(FORCE) of every UDP socket; 0 = kernel default", [
            .field("engine.udp_receive_buffer", \.engine.udpReceiveBuffer, example: [("engine.udp_receive_buffer", "0")]),
        ]),
        ConfigKey(default: "8388608", allowed: "0–2^30", override: "", reload: .restart,
                  meaning: "SO_SNDBUF(FORCE) of every UDP socket", [
            .field("engine.udp_send_buffer", \.engine.udpSendBuffer, example: [("engine.udp_send_buffer", "0")]),
        ]),
        ConfigKey(default: "true", allowed: "bool", override: "", reload: .restart,
                  meaning: "forward and relay services: read GSO trains coalesced (UDP_GRO), forward a train bound for one destination with UDP_SEGMENT", [
            .field("engine.gro", \.engine.gro, example: [("engine.gro", "false")]),
        ]),
        ConfigKey(default: "true", allowed: "bool", override: "", reload: .restart,
                  meaning: "TURN: send runs of equal-size datagrams from one relay to one peer as one UDP_SEGMENT train", [
            .field("engine.gso", \.engine.gso, example: [("engine.gso", "false")]),
        ]),
        ConfigKey(default: "\"off\"", allowed: "off, generic, native", override: "", reload: .restart,
                  meaning: "the XDP fast path for native-relay sessions and TURN channels (docs/xdp.md); if the kernel refuses, ferryd says why and serves from user space", [
            .field("engine.xdp", \.engine.xdp, example: [("engine.xdp", "\"generic\""), ("engine.xdp_interfaces", "[\"lo\"]")]),
        ]),
        ConfigKey(default: "[]", allowed: "interface names", override: "", reload: .restart,
                  meaning: "interfaces the XDP program attaches to; required when engine.xdp is not off", [
            .field("engine.xdp_interfaces", \.engine.xdpInterfaces, example: [("engine.xdp_interfaces", "[\"eth0\", \"eth1\"]")]),
        ]),
        ConfigKey(default: "16384", allowed: "1–1048576", override: "", reload: .restart,
                  meaning: "native-relay sessions the kernel path holds at once; the rest stay in user space (`ferry_xdp_refused_total`)", [
            .field("engine.xdp_sessions", \.engine.xdpSessions, example: [("engine.xdp_sessions", "100")]),
        ]),
        ConfigKey(default: "16384", allowed: "1–1048576", override: "", reload: .restart,
                  meaning: "TURN channels (UDP clients, IPv4) the kernel path holds at once, shared by the workers; the rest stay in user space (`ferry_xdp_refused_total`)", [
            .field("engine.xdp_channels", \.engine.xdpChannels, example: [("engine.xdp_channels", "100")]),
        ]),
        ConfigKey(default: "\"127.0.0.1:9090\"", allowed: "address or \"\"", override: "`FERRY_ADMIN_ADDRESS`, `--admin-address`", reload: .restart,
                  meaning: "\"\" disables; systemd socket \"admin\" wins", [
            .field("admin.address", \.admin.address, example: [("admin.address", "\"127.0.0.1:9191\"")]),
        ]),
        ConfigKey(default: "64", allowed: "1–65536", override: "", reload: .restart,
                  meaning: "more are closed at once and counted", [
            .field("admin.max_connections", \.admin.maxConnections, example: [("admin.max_connections", "8")]),
        ]),
        ConfigKey(default: "8", allowed: "1–65536", override: "", reload: .restart,
                  meaning: "admin connections from one source address; more are closed at once and counted (one client cannot hold them all)", [
            .field("admin.max_connections_per_source", \.admin.maxConnectionsPerSource, example: [("admin.max_connections_per_source", "2")]),
        ]),
        ConfigKey(default: "10", allowed: "1–3600", override: "", reload: .restart,
                  meaning: "incomplete request → 408; idle keep-alive closed", [
            .field("admin.request_timeout_seconds", \.admin.requestTimeoutSeconds, example: [("admin.request_timeout_seconds", "3")]),
        ]),
        ConfigKey(default: "\"\"", allowed: "string, ≥ 16 characters", override: "", reload: .applied,
                  meaning: "bearer token for the admin API's control and session endpoints; \"\" refuses them (docs/admin-api.md)", [
            .field("admin.token", \.admin.token, example: [("admin.token", "\"an-admin-token-0123456789\"")]),
        ]),
        ConfigKey(default: "\"\"", allowed: "path", override: "", reload: .applied,
                  meaning: "read the token from this file (first line; wins over admin.token), e.g. a systemd credential", [
            .field("admin.token_file", \.admin.tokenFile, example: [("admin.token_file", "\"/etc/ferry/admin.token\"")]),
        ]),
        ConfigKey(default: "10", allowed: "1–300 s", override: "", reload: .restart,
                  meaning: "the status page's charts: one point per interval, 30 intervals", [
            .field("admin.status_interval_seconds", \.admin.statusIntervalSeconds, example: [("admin.status_interval_seconds", "2")]),
        ]),
        ConfigKey(default: "required", allowed: "letters, digits, `-_.`", override: "", reload: .restart,
                  meaning: "matches systemd `FileDescriptorName=`", [
            .field("listener[].name", \.listeners, { $0.map(\.name) }, example: [("listener[].name", "\"c\"")]),
        ]),
        ConfigKey(default: "\"udp\"", allowed: "udp, tcp, tls", override: "", reload: .restart,
                  meaning: "tcp: TLS, STUN and HTTP told apart by the first bytes; tls: TLS first, then ALPN (`stun.turn`, `http/1.1`) or the first bytes. Under activation a stream listener takes one passed socket, shared by all workers with EPOLLEXCLUSIVE", [
            .field("listener[].transport", \.listeners, { $0.map(\.transport) }, example: [("listener[].transport", "\"tcp\"")]),
        ]),
        ConfigKey(default: "required", allowed: "`ip:port`, `[ipv6]:port`", override: "", reload: .restart,
                  meaning: "bound with SO_REUSEPORT, one socket per worker", [
            .field("listener[].address", \.listeners, { $0.map(\.address) }, example: [("listener[].address", "\"127.0.0.1:3479\"")]),
        ]),
        ConfigKey(default: "\"turn\"", allowed: "turn, forward, relay", override: "", reload: .restart,
                  meaning: "turn: STUN and TURN; relay: the native WireGuard relay (UDP, served by one worker; docs/relay-protocol.md); forward: every datagram to `forward_to` (benchmark mode)", [
            .field("listener[].service", \.listeners, { $0.map(\.service) }, example: [("listener[].service", "\"forward\""), ("listener[].forward_to", "\"127.0.0.1:9\"")]),
        ]),
        ConfigKey(default: "—", allowed: "address", override: "", reload: .restart,
                  meaning: "required for `service = \"forward\"`", [
            .field("listener[].forward_to", \.listeners, { $0.map(\.forwardTo) }, example: [("listener[].forward_to", "\"127.0.0.1:9\""), ("listener[].service", "\"forward\"")]),
        ]),
        ConfigKey(default: "\"ferry\"", allowed: "1–763 bytes", override: "", reload: .restart,
                  meaning: "realm of 401 challenges and long-term keys", [
            .field("turn.realm", \.turn.realm, example: [("turn.realm", "\"example.org\"")]),
        ]),
        ConfigKey(default: "\"\"", allowed: "address", override: "", reload: .restart,
                  meaning: "where relayed sockets bind; one is required with a TURN listener", [
            .field("turn.relay_ipv4", \.turn.relayIPv4, example: [("turn.relay_ipv4", "\"127.0.0.2\"")]),
            .field("turn.relay_ipv6", \.turn.relayIPv6, example: [("turn.relay_ipv6", "\"::1\"")]),
        ]),
        ConfigKey(default: "\"\"", allowed: "address", override: "", reload: .restart,
                  meaning: "advertised in XOR-RELAYED-ADDRESS behind 1:1 NAT", [
            .field("turn.external_ipv4", \.turn.externalIPv4, example: [("turn.external_ipv4", "\"192.0.2.1\"")]),
            .field("turn.external_ipv6", \.turn.externalIPv6, example: [("turn.external_ipv6", "\"2001:db8::1\"")]),
        ]),
        ConfigKey(default: "49152, 65535", allowed: "1024–65535", override: "", reload: .restart,
                  meaning: "relayed ports; each worker takes a contiguous block", [
            .field("turn.port_min", \.turn.portMin, example: [("turn.port_min", "50000")]),
            .field("turn.port_max", \.turn.portMax, example: [("turn.port_max", "60000")]),
        ]),
        ConfigKey(default: "600, 3600", allowed: "60–86400 s", override: "", reload: .restart,
                  meaning: "allocation lifetime: requests are clamped to [default, max] (RFC 8656 §7.2)", [
            .field("turn.default_lifetime", \.turn.defaultLifetime, example: [("turn.default_lifetime", "300")]),
            .field("turn.max_lifetime", \.turn.maxLifetime, example: [("turn.max_lifetime", "7200")]),
        ]),
        ConfigKey(default: "600", allowed: "5–86400 s", override: "", reload: .restart,
                  meaning: "older nonces get 438 Stale Nonce", [
            .field("turn.nonce_lifetime", \.turn.nonceLifetime, example: [("turn.nonce_lifetime", "60")]),
        ]),
        ConfigKey(default: "\"\"", allowed: "string", override: "", reload: .restart,
                  meaning: "nonce MAC key; \"\" = `state_directory/nonce.key`, else random per process", [
            .field("turn.nonce_secret", \.turn.nonceSecret, example: [("turn.nonce_secret", "\"another-nonce-secret\"")]),
        ]),
        ConfigKey(default: "10000", allowed: "1–10^7", override: "", reload: .restart,
                  meaning: "whole server, split evenly among workers; over it: 508", [
            .field("turn.max_allocations", \.turn.maxAllocations, example: [("turn.max_allocations", "100")]),
        ]),
        ConfigKey(default: "10", allowed: "1–10^7", override: "", reload: .restart,
                  meaning: "over it: 486", [
            .field("turn.max_allocations_per_user", \.turn.maxAllocationsPerUser, example: [("turn.max_allocations_per_user", "2")]),
        ]),
        ConfigKey(default: "16", allowed: "1–1024", override: "", reload: .restart,
                  meaning: "over it: 508", [
            .field("turn.max_permissions_per_allocation", \.turn.maxPermissionsPerAllocation, example: [("turn.max_permissions_per_allocation", "4")]),
        ]),
        ConfigKey(default: "16", allowed: "1–4096", override: "", reload: .restart,
                  meaning: "over it: 508", [
            .field("turn.max_channels_per_allocation", \.turn.maxChannelsPerAllocation, example: [("turn.max_channels_per_allocation", "4")]),
        ]),
        ConfigKey(default: "0, 0", allowed: "bytes/s, bytes", override: "", reload: .restart,
                  meaning: "token bucket per allocation, both directions; 0 = unlimited; drops count as `quota`", [
            .field("turn.bandwidth_per_allocation", \.turn.bandwidthPerAllocation, example: [("turn.bandwidth_per_allocation", "125000")]),
            .field("turn.bandwidth_burst", \.turn.bandwidthBurst, example: [("turn.bandwidth_burst", "250000")]),
        ]),
        ConfigKey(default: "5, 20", allowed: "0–10^6", override: "", reload: .restart,
                  meaning: "error answers to unauthenticated requests (401, 438, 400, 420) per source IP (per worker); over it they are dropped (`rate_limited`), since each is larger than its request; 0 = no limit", [
            .field("turn.unauthorized_per_second", \.turn.unauthorizedPerSecond, example: [("turn.unauthorized_per_second", "1")]),
            .field("turn.unauthorized_burst", \.turn.unauthorizedBurst, example: [("turn.unauthorized_burst", "2")]),
        ]),
        ConfigKey(default: "1048576", allowed: "0–2^30", override: "", reload: .restart,
                  meaning: "SO_RCVBUF/SO_SNDBUF of each relayed socket (one per allocation)", [
            .field("turn.relay_buffer_bytes", \.turn.relayBufferBytes, example: [("turn.relay_buffer_bytes", "65536")]),
        ]),
        ConfigKey(default: "false", allowed: "bool", override: "", reload: .restart,
                  meaning: "true: only RFC 8656's 0x4000–0x4FFF; false also RFC 5766's up to 0x7FFF (coturn's clients pick from all of it)", [
            .field("turn.strict_channel_numbers", \.turn.strictChannelNumbers, example: [("turn.strict_channel_numbers", "true")]),
        ]),
        ConfigKey(default: "true", allowed: "bool", override: "", reload: .restart,
                  meaning: "ChannelData and Send from one allocation to another of this ferryd are delivered inside it (on one worker directly, across workers in batches), checked as if they had crossed the network (docs/turn.md)", [
            .field("turn.short_circuit", \.turn.shortCircuit, example: [("turn.short_circuit", "false")]),
        ]),
        ConfigKey(default: "4194304", allowed: "65536–1073741824", override: "", reload: .restart,
                  meaning: "TURN to TURN across workers: bytes in flight towards each worker; past it datagrams take the kernel's path (counted: ferry_turn_short_circuit_handoff_full_total)", [
            .field("turn.short_circuit_handoff_bytes", \.turn.shortCircuitHandoffBytes, example: [("turn.short_circuit_handoff_bytes", "1048576")]),
        ]),
        ConfigKey(default: "[]", allowed: "strings ≥ 16 bytes", override: "", reload: .applied,
                  meaning: "coturn-compatible TURN REST secrets, several for rotation", [
            .field("turn.static_auth_secrets", \.turn.staticAuthSecrets, example: [("turn.static_auth_secrets", "[\"another-rest-secret-0001\"]")]),
        ]),
        ConfigKey(default: "", allowed: "", override: "", reload: .applied,
                  meaning: "static users; `key` = hex MD5(name:realm:password)", [
            .field("turn.user[].name", \.turn.users, { $0.map(\.name) }, example: [("turn.user[].name", "\"v\"")]),
            .field("turn.user[].password", \.turn.users, { $0.map(\.password) }, example: [("turn.user[].password", "\"other\"")]),
            .field("turn.user[].key", \.turn.users, { $0.map(\.key) }, example: [("turn.user[].key", "\"0123456789abcdef0123456789abcdef\""), ("turn.user[].password", ConfigKey.remove)]),
        ]),
        ConfigKey(default: "[]", allowed: "CIDRs", override: "", reload: .applied,
                  meaning: "peers allowed although denied by default (a VPC's RFC 1918 range)", [
            .field("policy.allow", \.policy.allow, example: [("policy.allow", "[\"10.0.0.0/8\"]")]),
        ]),
        ConfigKey(default: "[]", allowed: "CIDRs", override: "", reload: .applied,
                  meaning: "peers never relayed to; overrides everything", [
            .field("policy.deny", \.policy.deny, example: [("policy.deny", "[\"192.0.2.0/24\"]")]),
        ]),
        ConfigKey(default: "", allowed: "paths", override: "", reload: .applied,
                  meaning: "PEM chain and key; the first is the default, the others chosen by SNI (names from their subjectAltName)", [
            .field("tls.certificate[].certificate", \.tls.certificates, { $0.map(\.certificate) }, example: [("tls.certificate[].certificate", "\"/etc/ferry/other.pem\"")]),
            .field("tls.certificate[].key", \.tls.certificates, { $0.map(\.key) }, example: [("tls.certificate[].key", "\"/etc/ferry/other.key\"")]),
        ]),
        ConfigKey(default: "false", allowed: "bool", override: "", reload: .restart,
                  meaning: "generate a self-signed certificate at start (the development default)", [
            .field("tls.self_signed", \.tls.selfSigned, example: [("tls.self_signed", "true")]),
        ]),
        ConfigKey(default: "\"1.2\"", allowed: "1.2, 1.3", override: "", reload: .applied,
                  meaning: "older versions are refused", [
            .field("tls.min_version", \.tls.minVersion, example: [("tls.min_version", "\"1.3\"")]),
        ]),
        ConfigKey(default: "10", allowed: "1–300", override: "", reload: .restart,
                  meaning: "a connection must finish sniffing and the TLS handshake in this time", [
            .field("tls.handshake_timeout_seconds", \.tls.handshakeTimeoutSeconds, example: [("tls.handshake_timeout_seconds", "3")]),
        ]),
        ConfigKey(default: "20, 40", allowed: "0–10^6", override: "", reload: .restart,
                  meaning: "new TLS handshakes per source IP per worker; over it the connection is closed (`rate_limited`)", [
            .field("tls.handshakes_per_second", \.tls.handshakesPerSecond, example: [("tls.handshakes_per_second", "5")]),
            .field("tls.handshake_burst", \.tls.handshakeBurst, example: [("tls.handshake_burst", "10")]),
        ]),
        ConfigKey(default: "600", allowed: "10–86400", override: "", reload: .restart,
                  meaning: "a connection that sends nothing this long is closed (TURN clients refresh well within it)", [
            .field("stream.idle_timeout_seconds", \.stream.idleTimeoutSeconds, example: [("stream.idle_timeout_seconds", "60")]),
        ]),
        ConfigKey(default: "10", allowed: "1–3600", override: "", reload: .restart,
                  meaning: "an HTTP request head on a stream listener must be complete this long after its first byte, else 408 and close (`request_timeout`)", [
            .field("stream.request_timeout_seconds", \.stream.requestTimeoutSeconds, example: [("stream.request_timeout_seconds", "3")]),
        ]),
        ConfigKey(default: "262144", allowed: "4096–64 MiB", override: "", reload: .restart,
                  meaning: "the most a connection queues for a client that reads slowly; relayed data beyond it is dropped (`buffer_full`)", [
            .field("stream.write_buffer_bytes", \.stream.writeBufferBytes, example: [("stream.write_buffer_bytes", "65536")]),
        ]),
        ConfigKey(default: "20000", allowed: "1–10^7", override: "", reload: .restart,
                  meaning: "whole server, split among workers; more are closed at once (`limit`)", [
            .field("stream.max_connections", \.stream.maxConnections, example: [("stream.max_connections", "100")]),
        ]),
        ConfigKey(default: "1024", allowed: "1–10^7", override: "", reload: .restart,
                  meaning: "open connections one source IP may hold on each worker; more are closed at once (`source_limit`). Raise it where many peers share one address (a large office NAT, CGNAT)", [
            .field("stream.max_connections_per_source", \.stream.maxConnectionsPerSource, example: [("stream.max_connections_per_source", "8")]),
        ]),
        ConfigKey(default: "false", allowed: "bool", override: "", reload: .restart,
                  meaning: "signaling at `/v1/signal` on stream listeners (docs/signaling.md)", [
            .field("signal.enabled", \.signal.enabled, example: [("signal.enabled", "false")]),
        ]),
        ConfigKey(default: "false", allowed: "bool", override: "", reload: .restart,
                  meaning: "also accept `ws://` without TLS (the loopback development default)", [
            .field("signal.allow_plaintext", \.signal.allowPlaintext, example: [("signal.allow_plaintext", "true")]),
        ]),
        ConfigKey(default: "\"\"", allowed: "64 hex digits", override: "", reload: .restart,
                  meaning: "the server's X25519 private key; \"\" = `state_directory/signal.key`, else per process", [
            .field("signal.server_key", \.signal.serverKey, example: [("signal.server_key", "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"")]),
        ]),
        ConfigKey(default: "[]", allowed: "strings ≥ 16 bytes", override: "", reload: .applied,
                  meaning: "secrets for `ferry1.` tokens (`ferry token`), several for rotation", [
            .field("signal.token_secrets", \.signal.tokenSecrets, example: [("signal.token_secrets", "[\"another-token-secret-01\"]")]),
        ]),
        ConfigKey(default: "\"\"", allowed: "path, strings", override: "", reload: .applied,
                  meaning: "JWT (RS256, ES256, EdDSA) verification", [
            .field("signal.jwks_file", \.signal.jwksFile, example: [("signal.jwks_file", "\"/etc/ferry/jwks.json\""), ("signal.jwt_issuer", "\"https://issuer.example\""), ("signal.jwt_audience", "\"ferry\"")]),
            .field("signal.jwt_issuer", \.signal.jwtIssuer, example: [("signal.jwt_issuer", "\"https://other.example\"")]),
            .field("signal.jwt_audience", \.signal.jwtAudience, example: [("signal.jwt_audience", "\"other\"")]),
        ]),
        ConfigKey(default: "\"\"", allowed: "https URL, path", override: "", reload: .applied,
                  meaning: "fetch the JWKS from the issuer at start and on every reload (instead of `jwks_file`), on a thread of its own; a failed fetch keeps the keys in use and is retried every 30 s; CA file for a private issuer, else the system's CAs", [
            .field("signal.jwks_url", \.signal.jwksURL, example: [("signal.jwks_url", "\"https://issuer.example/jwks.json\""), ("signal.jwt_issuer", "\"https://issuer.example\""), ("signal.jwt_audience", "\"ferry\"")]),
            .field("signal.jwks_ca_file", \.signal.jwksCAFile, example: [("signal.jwks_ca_file", "\"/etc/ferry/issuer-ca.pem\"")]),
        ]),
        ConfigKey(default: "10", allowed: "1–120", override: "", reload: .applied,
                  meaning: "the most one JWKS fetch may take: connect, TLS handshake and response together", [
            .field("signal.jwks_timeout_seconds", \.signal.jwksTimeoutSeconds, example: [("signal.jwks_timeout_seconds", "3")]),
        ]),
        ConfigKey(default: "\"ferry_network\", \"\"", allowed: "claim names", override: "", reload: .applied,
                  meaning: "the JWT claim naming the network; optionally one binding the peer key", [
            .field("signal.network_claim", \.signal.networkClaim, example: [("signal.network_claim", "\"net\"")]),
            .field("signal.peer_claim", \.signal.peerClaim, example: [("signal.peer_claim", "\"wg_key\"")]),
        ]),
        ConfigKey(default: "16384", allowed: "64–1 MiB", override: "", reload: .applied,
                  meaning: "a routed message's `payload` limit (`payload_too_large`)", [
            .field("signal.max_payload", \.signal.maxPayload, example: [("signal.max_payload", "4096")]),
        ]),
        ConfigKey(default: "65536", allowed: "1024–4 MiB", override: "", reload: .restart,
                  meaning: "WebSocket message limit (close 1009)", [
            .field("signal.max_message", \.signal.maxMessage, example: [("signal.max_message", "8192")]),
        ]),
        ConfigKey(default: "50, 100, 262144", allowed: "", override: "", reload: .applied,
                  meaning: "per-peer rate limits (`rate_limited`); the byte bucket holds two seconds' worth", [
            .field("signal.messages_per_second", \.signal.messagesPerSecond, example: [("signal.messages_per_second", "5")]),
            .field("signal.message_burst", \.signal.messageBurst, example: [("signal.message_burst", "10")]),
            .field("signal.bytes_per_second", \.signal.bytesPerSecond, example: [("signal.bytes_per_second", "65536")]),
        ]),
        ConfigKey(default: "256", allowed: "1–100000", override: "", reload: .restart,
                  meaning: "per-peer outbound queue; full drops the oldest", [
            .field("signal.queue_messages", \.signal.queueMessages, example: [("signal.queue_messages", "16")]),
        ]),
        ConfigKey(default: "4096", allowed: "1–1000000", override: "", reload: .restart,
                  meaning: "presence subscriptions one peer may hold; a subscribe past it is refused whole (`subscription_limit`)", [
            .field("signal.max_subscriptions_per_peer", \.signal.maxSubscriptionsPerPeer, example: [("signal.max_subscriptions_per_peer", "64")]),
        ]),
        ConfigKey(default: "100000", allowed: "1–100000000", override: "", reload: .restart,
                  meaning: "presence subscriptions held by all peers of one network", [
            .field("signal.max_subscriptions_per_network", \.signal.maxSubscriptionsPerNetwork, example: [("signal.max_subscriptions_per_network", "1000")]),
        ]),
        ConfigKey(default: "400000", allowed: "1–100000000", override: "", reload: .restart,
                  meaning: "presence subscriptions held in all (about 350 bytes each: docs/signaling.md)", [
            .field("signal.max_subscriptions", \.signal.maxSubscriptions, example: [("signal.max_subscriptions", "10000")]),
        ]),
        ConfigKey(default: "10", allowed: "1–300", override: "", reload: .restart,
                  meaning: "a connection must authenticate this long after it opens, else `not_authenticated` and close 4001", [
            .field("signal.auth_timeout_seconds", \.signal.authTimeoutSeconds, example: [("signal.auth_timeout_seconds", "3")]),
        ]),
        ConfigKey(default: "4", allowed: "1–100", override: "", reload: .applied,
                  meaning: "messages a connection may send before `auth` (checked before parsing); more closes it with `not_authenticated`", [
            .field("signal.preauth_messages", \.signal.preauthMessages, example: [("signal.preauth_messages", "2")]),
        ]),
        ConfigKey(default: "32768", allowed: "1024–1048576", override: "", reload: .applied,
                  meaning: "bytes a connection may send before `auth`; more closes it", [
            .field("signal.preauth_bytes", \.signal.preauthBytes, example: [("signal.preauth_bytes", "8192")]),
        ]),
        ConfigKey(default: "1048576", allowed: "65536–2^30", override: "", reload: .restart,
                  meaning: "bytes one peer's outbound queue may hold (with `queue_messages`); full drops the oldest", [
            .field("signal.queue_bytes", \.signal.queueBytes, example: [("signal.queue_bytes", "262144")]),
        ]),
        ConfigKey(default: "268435456", allowed: "2^20–2^40", override: "", reload: .restart,
                  meaning: "bytes all peers' outbound queues may hold together (split over workers); past it new frames for slow readers are dropped", [
            .field("signal.queue_bytes_total", \.signal.queueBytesTotal, example: [("signal.queue_bytes_total", "67108864")]),
        ]),
        ConfigKey(default: "1, 5", allowed: "1–1000", override: "", reload: .restart,
                  meaning: "authentications per second (burst) of one key, and of one source address ×20: a key reconnecting in a loop is refused with `rate_limited`, bounding presence fan-out", [
            .field("signal.registrations_per_second", \.signal.registrationsPerSecond, example: [("signal.registrations_per_second", "2")]),
            .field("signal.registration_burst", \.signal.registrationBurst, example: [("signal.registration_burst", "10")]),
        ]),
        ConfigKey(default: "20", allowed: "1–3600", override: "", reload: .applied,
                  meaning: "WebSocket pings to authenticated peers (announced in `hello`)", [
            .field("signal.ping_interval_seconds", \.signal.pingIntervalSeconds, example: [("signal.ping_interval_seconds", "5")]),
        ]),
        ConfigKey(default: "86400", allowed: "seconds", override: "", reload: .applied,
                  meaning: "lifetime of handed-out TURN credentials", [
            .field("signal.relay_ttl_seconds", \.signal.relayTTLSeconds, example: [("signal.relay_ttl_seconds", "3600")]),
        ]),
        ConfigKey(default: "[]", allowed: "turn:/turns: URLs", override: "", reload: .applied,
                  meaning: "this server's relay URLs in `welcome` (credentials from the first `turn.static_auth_secrets`)", [
            .field("signal.self_relay_urls", \.signal.selfRelayURLs, example: [("signal.self_relay_urls", "[\"turn:relay.example.org:3478\"]")]),
        ]),
        ConfigKey(default: "", allowed: "", override: "", reload: .applied,
                  meaning: "relays of other regions and their TURN REST secrets", [
            .field("signal.relay[].region", \.signal.relays, { $0.map(\.region) }, example: [("signal.relay[].region", "\"us-west\"")]),
            .field("signal.relay[].urls", \.signal.relays, { $0.map(\.urls) }, example: [("signal.relay[].urls", "[\"turn:other.example.org:3478\"]")]),
            .field("signal.relay[].secret", \.signal.relays, { $0.map(\.secret) }, example: [("signal.relay[].secret", "\"another-relay-secret-01\"")]),
        ]),
    ]
}
