import FerryCore
import TOMLKit
import FerrySystem

/// Reading a config file: every section's keys, with their defaults, ranges and companions, and
/// the environment's overrides. Every problem is collected (`ConfigErrors`), not just the first.
extension FerryConfig {
    /// Parses and validates TOML text. Throws `ConfigErrors` listing every problem found.
    public static func parse(_ text: String) throws(ConfigErrors) -> FerryConfig {
        try parse(text, sink: ConfigReader.IssueSink())
    }

    static func parse(_ text: String, sink: ConfigReader.IssueSink) throws(ConfigErrors) -> FerryConfig {
        let root = ConfigReader(try ConfigReader.parseTOML(text), sink: sink)
        var c = FerryConfig()

        let server = root.table("server")
        c.server.workers = server.int("workers", default: 0, range: 0...1024)
        c.server.pinWorkers = server.bool("pin_workers", default: true)
        c.server.drainSeconds = server.int("drain_seconds", default: 10, range: 0...3600)
        c.server.software = server.string("software", default: "ferry") ?? "ferry"
        c.server.stateDirectory = server.string("state_directory", default: "") ?? ""
        c.server.lab = server.bool("lab", default: false)
        server.finish()

        let log = root.table("log")
        c.log.level = log.choice("level", default: LogLevel.info)
        c.log.format = log.choice("format", default: LogFormat.text)
        c.log.sessions = log.bool("sessions", default: true)
        log.finish()

        let engine = root.table("engine")
        c.engine.batchSize = engine.int("batch_size", default: 64, range: 1...1024)
        c.engine.maxDatagram = engine.int("max_datagram", default: 2048, range: 576...65535)
        c.engine.udpReceiveBuffer = engine.int("udp_receive_buffer", default: 8 << 20, range: 0...(1 << 30))
        c.engine.udpSendBuffer = engine.int("udp_send_buffer", default: 8 << 20, range: 0...(1 << 30))
        c.engine.gro = engine.bool("gro", default: true)
        c.engine.gso = engine.bool("gso", default: true)
        c.engine.xdp = engine.choice("xdp", default: FerryConfig.XDPMode.off)
        c.engine.xdpInterfaces = engine.stringArray("xdp_interfaces", default: [])
        c.engine.xdpSessions = engine.int("xdp_sessions", default: 16384, range: 1...1_048_576)
        c.engine.xdpChannels = engine.int("xdp_channels", default: 16384, range: 1...1_048_576)
        if c.engine.xdp != .off && c.engine.xdpInterfaces.isEmpty {
            engine.report("xdp_interfaces", "must name at least one interface when engine.xdp is \"\(c.engine.xdp.rawValue)\"")
        }
        for (i, name) in c.engine.xdpInterfaces.enumerated() where name.isEmpty || name.utf8.count > 15 || name.contains("/") || name.contains(" ") {
            engine.report("xdp_interfaces[\(i)]", "must be an interface name (1–15 characters, no '/' or spaces), got \"\(name)\"")
        }
        engine.finish()

        let admin = root.table("admin")
        if let s = admin.string("address", default: "127.0.0.1:9090"), !s.isEmpty {
            c.admin.address = SocketAddress(s)
            if c.admin.address == nil {
                admin.report("address", "must be an address like \"127.0.0.1:9090\", or \"\" to disable, got \"\(s)\"")
            }
        } else {
            c.admin.address = nil
        }
        c.admin.maxConnections = admin.int("max_connections", default: 64, range: 1...65536)
        c.admin.maxConnectionsPerSource = admin.int("max_connections_per_source", default: 8, range: 1...65536)
        c.admin.requestTimeoutSeconds = admin.int("request_timeout_seconds", default: 10, range: 1...3600)
        c.admin.token = admin.string("token", default: "") ?? ""
        if !c.admin.token.isEmpty && c.admin.token.utf8.count < 16 {
            admin.report("token", "must be at least 16 characters (it is the only thing between a caller and ending every session)")
        }
        c.admin.tokenFile = admin.string("token_file", default: "") ?? ""
        c.admin.statusIntervalSeconds = admin.int("status_interval_seconds", default: 10, range: 1...300)
        admin.finish()

        var names: Set<String> = []
        for l in root.tables("listener") {
            let name = l.string("name", default: nil)
            let transport = l.choice("transport", default: Transport.udp)
            let address = l.address("address", default: nil)
            let service = l.choice("service", default: Service.turn)
            let forwardTo = l.address("forward_to", default: nil)
            if name == nil { l.report("name", "is required") }
            if address == nil && l.table?["address"] == nil { l.report("address", "is required") }
            if let name {
                if name.isEmpty || name.count > 255 || !name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) {
                    l.report("name", "must be 1–255 characters of letters, digits, '-', '_' or '.', got \"\(name)\"")
                } else if !names.insert(name).inserted {
                    l.report("name", "\"\(name)\" is used by another listener")
                }
            }
            if service == .forward && forwardTo == nil { l.report("forward_to", "is required when service = \"forward\"") }
            if service != .forward && forwardTo != nil { l.report("forward_to", "is only allowed when service = \"forward\"") }
            if transport != .udp && service == .forward { l.report("transport", "service \"forward\" needs transport \"udp\"") }
            if transport != .udp && service == .relay { l.report("transport", "service \"relay\" needs transport \"udp\" (its stream side is the TLS listener's)") }
            l.finish()
            if let name, let address {
                c.listeners.append(Listener(name: name, transport: transport, address: address, service: service, forwardTo: forwardTo))
            }
        }
        let turn = root.table("turn")
        c.turn.realm = turn.string("realm", default: "ferry") ?? "ferry"
        if c.turn.realm.isEmpty || c.turn.realm.utf8.count > 763 { turn.report("realm", "must be 1–763 bytes") }
        func ip(_ key: String, family v4: Bool) -> IPAddress? {
            guard let s = turn.string(key, default: ""), !s.isEmpty else { return nil }
            guard let a = IPAddress(s), a.isIPv4 == v4 else {
                turn.report(key, "must be an \(v4 ? "IPv4" : "IPv6") address, got \"\(s)\"")
                return nil
            }
            return a
        }
        c.turn.relayIPv4 = ip("relay_ipv4", family: true)
        c.turn.relayIPv6 = ip("relay_ipv6", family: false)
        c.turn.externalIPv4 = ip("external_ipv4", family: true)
        c.turn.externalIPv6 = ip("external_ipv6", family: false)
        c.turn.portMin = turn.int("port_min", default: 49152, range: 1024...65535)
        c.turn.portMax = turn.int("port_max", default: 65535, range: 1024...65535)
        if c.turn.portMax < c.turn.portMin { turn.report("port_max", "must not be below turn.port_min (\(c.turn.portMin))") }
        c.turn.defaultLifetime = turn.int("default_lifetime", default: 600, range: 60...86400)
        c.turn.maxLifetime = turn.int("max_lifetime", default: 3600, range: 60...86400)
        if c.turn.maxLifetime < c.turn.defaultLifetime { turn.report("max_lifetime", "must not be below turn.default_lifetime") }
        c.turn.nonceLifetime = turn.int("nonce_lifetime", default: 600, range: 5...86400)
        c.turn.nonceSecret = turn.string("nonce_secret", default: "") ?? ""
        c.turn.maxAllocations = turn.int("max_allocations", default: 10000, range: 1...10_000_000)
        c.turn.maxAllocationsPerUser = turn.int("max_allocations_per_user", default: 10, range: 1...10_000_000)
        c.turn.maxPermissionsPerAllocation = turn.int("max_permissions_per_allocation", default: 16, range: 1...1024)
        c.turn.maxChannelsPerAllocation = turn.int("max_channels_per_allocation", default: 16, range: 1...4096)
        c.turn.bandwidthPerAllocation = turn.int("bandwidth_per_allocation", default: 0, range: 0...(1 << 40))
        c.turn.bandwidthBurst = turn.int("bandwidth_burst", default: 0, range: 0...(1 << 40))
        c.turn.unauthorizedPerSecond = turn.int("unauthorized_per_second", default: 5, range: 0...1_000_000)
        c.turn.unauthorizedBurst = turn.int("unauthorized_burst", default: 20, range: 1...1_000_000)
        c.turn.strictChannelNumbers = turn.bool("strict_channel_numbers", default: false)
        c.turn.shortCircuit = turn.bool("short_circuit", default: true)
        c.turn.shortCircuitHandoffBytes = turn.int("short_circuit_handoff_bytes", default: 4 << 20, range: 65536...(1 << 30))
        c.turn.relayBufferBytes = turn.int("relay_buffer_bytes", default: 1 << 20, range: 0...(1 << 30))
        c.turn.staticAuthSecrets = turn.stringArray("static_auth_secrets", default: [])
        for (i, secret) in c.turn.staticAuthSecrets.enumerated() where secret.utf8.count < 16 {
            turn.report("static_auth_secrets[\(i)]", "must be at least 16 bytes")
        }
        var userNames: Set<String> = []
        for u in turn.tables("user") {
            let name = u.string("name", default: nil)
            let password = u.string("password", default: nil)
            let key = u.string("key", default: nil)
            if name == nil || name!.isEmpty { u.report("name", "is required") }
            if (password == nil) == (key == nil) { u.report("password", "give exactly one of password or key") }
            if let key, key.utf8.count != 32 || !key.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) {
                u.report("key", "must be 32 lower-case hex digits: MD5(name:realm:password)")
            }
            if let name, !userNames.insert(name).inserted { u.report("name", "\"\(name)\" is defined twice") }
            u.finish()
            if let name { c.turn.users.append(TURNUser(name: name, password: password, key: key)) }
        }
        turn.finish()

        let policy = root.table("policy")
        c.policy.allow = policy.stringArray("allow", default: [])
        c.policy.deny = policy.stringArray("deny", default: [])
        for (key, list) in [("allow", c.policy.allow), ("deny", c.policy.deny)] {
            for (i, cidr) in list.enumerated() where !FerryConfig.isCIDR(cidr) {
                policy.report("\(key)[\(i)]", "must be an address block like \"10.0.0.0/8\" or \"fd00::/8\", got \"\(cidr)\"")
            }
        }
        policy.finish()

        let tls = root.table("tls")
        for (i, cert) in tls.tables("certificate").enumerated() {
            let certificate = cert.string("certificate", default: nil)
            let key = cert.string("key", default: nil)
            if certificate == nil { cert.report("certificate", "is required: path of a PEM certificate chain") }
            if key == nil { cert.report("key", "is required: path of the PEM private key") }
            cert.finish()
            if let certificate, let key { c.tls.certificates.append(TLSCertificate(certificate: certificate, key: key)) }
            _ = i
        }
        c.tls.selfSigned = tls.bool("self_signed", default: false)
        if let v = tls.string("min_version", default: "1.2") {
            if v == "1.2" || v == "1.3" { c.tls.minVersion = v } else { tls.report("min_version", "must be \"1.2\" or \"1.3\", got \"\(v)\"") }
        }
        c.tls.handshakeTimeoutSeconds = tls.int("handshake_timeout_seconds", default: 10, range: 1...300)
        c.tls.handshakesPerSecond = tls.int("handshakes_per_second", default: 20, range: 0...1_000_000)
        c.tls.handshakeBurst = tls.int("handshake_burst", default: 40, range: 1...1_000_000)
        tls.finish()
        let stream = root.table("stream")
        c.stream.idleTimeoutSeconds = stream.int("idle_timeout_seconds", default: 600, range: 10...86400)
        c.stream.writeBufferBytes = stream.int("write_buffer_bytes", default: 262_144, range: 4096...(64 << 20))
        c.stream.maxConnections = stream.int("max_connections", default: 20_000, range: 1...10_000_000)
        c.stream.requestTimeoutSeconds = stream.int("request_timeout_seconds", default: 10, range: 1...3600)
        c.stream.maxConnectionsPerSource = stream.int("max_connections_per_source", default: 1024, range: 1...10_000_000)
        stream.finish()
        let sig = root.table("signal")
        c.signal.enabled = sig.bool("enabled", default: false)
        c.signal.allowPlaintext = sig.bool("allow_plaintext", default: false)
        c.signal.serverKey = sig.string("server_key", default: "") ?? ""
        if !c.signal.serverKey.isEmpty && (c.signal.serverKey.utf8.count != 64 || !c.signal.serverKey.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) })) {
            sig.report("server_key", "must be 64 lower-case hex digits (an X25519 private key), or \"\" to keep one in server.state_directory")
        }
        c.signal.tokenSecrets = sig.stringArray("token_secrets", default: [])
        for (i, secret) in c.signal.tokenSecrets.enumerated() where secret.utf8.count < 16 {
            sig.report("token_secrets[\(i)]", "must be at least 16 bytes")
        }
        c.signal.jwksFile = sig.string("jwks_file", default: "") ?? ""
        c.signal.jwksURL = sig.string("jwks_url", default: "") ?? ""
        c.signal.jwksCAFile = sig.string("jwks_ca_file", default: "") ?? ""
        c.signal.jwksTimeoutSeconds = sig.int("jwks_timeout_seconds", default: 10, range: 1...120)
        if !c.signal.jwksURL.isEmpty && !c.signal.jwksURL.hasPrefix("https://") {
            sig.report("jwks_url", "must be an https:// URL, got \"\(c.signal.jwksURL)\"")
        }
        if !c.signal.jwksURL.isEmpty && !c.signal.jwksFile.isEmpty {
            sig.report("jwks_url", "give jwks_file or jwks_url, not both")
        }
        c.signal.jwtIssuer = sig.string("jwt_issuer", default: "") ?? ""
        c.signal.jwtAudience = sig.string("jwt_audience", default: "") ?? ""
        c.signal.networkClaim = sig.string("network_claim", default: "ferry_network") ?? "ferry_network"
        c.signal.peerClaim = sig.string("peer_claim", default: "") ?? ""
        if (!c.signal.jwksFile.isEmpty || !c.signal.jwksURL.isEmpty) && (c.signal.jwtIssuer.isEmpty || c.signal.jwtAudience.isEmpty) {
            sig.report("jwt_issuer", "jwt_issuer and jwt_audience are required with jwks_file or jwks_url")
        }
        c.signal.maxPayload = sig.int("max_payload", default: 16384, range: 64...(1 << 20))
        c.signal.maxMessage = sig.int("max_message", default: 65536, range: 1024...(4 << 20))
        c.signal.messagesPerSecond = sig.int("messages_per_second", default: 50, range: 1...1_000_000)
        c.signal.messageBurst = sig.int("message_burst", default: 100, range: 1...1_000_000)
        c.signal.bytesPerSecond = sig.int("bytes_per_second", default: 262_144, range: 1024...(1 << 30))
        c.signal.queueMessages = sig.int("queue_messages", default: 256, range: 1...100_000)
        c.signal.maxSubscriptionsPerPeer = sig.int("max_subscriptions_per_peer", default: 4096, range: 1...1_000_000)
        c.signal.maxSubscriptionsPerNetwork = sig.int("max_subscriptions_per_network", default: 100_000, range: 1...100_000_000)
        c.signal.maxSubscriptions = sig.int("max_subscriptions", default: 400_000, range: 1...100_000_000)
        c.signal.authTimeoutSeconds = sig.int("auth_timeout_seconds", default: 10, range: 1...300)
        c.signal.preauthMessages = sig.int("preauth_messages", default: 4, range: 1...100)
        c.signal.preauthBytes = sig.int("preauth_bytes", default: 32768, range: 1024...(1 << 20))
        c.signal.queueBytes = sig.int("queue_bytes", default: 1 << 20, range: 65536...(1 << 30))
        c.signal.queueBytesTotal = sig.int("queue_bytes_total", default: 256 << 20, range: 1 << 20...(1 << 40))
        c.signal.registrationsPerSecond = sig.int("registrations_per_second", default: 1, range: 1...1000)
        c.signal.registrationBurst = sig.int("registration_burst", default: 5, range: 1...1000)
        c.signal.pingIntervalSeconds = sig.int("ping_interval_seconds", default: 20, range: 1...3600)
        c.signal.relayTTLSeconds = sig.int("relay_ttl_seconds", default: 86400, range: 60...(30 * 86400))
        c.signal.selfRelayURLs = sig.stringArray("self_relay_urls", default: [])
        for (i, r) in sig.tables("relay").enumerated() {
            let region = r.string("region", default: nil)
            let urls = r.stringArray("urls", default: [])
            let secret = r.string("secret", default: nil)
            if region == nil { r.report("region", "is required") }
            if urls.isEmpty { r.report("urls", "is required: turn:, turns:, wgrelay: or wgrelays: URLs") }
            if secret == nil { r.report("secret", "is required: the relay's TURN REST shared secret") }
            for (j, u) in urls.enumerated() where !FerryConfig.isRelayURL(u) {
                r.report("urls[\(j)]", "must start with turn:, turns:, wgrelay: or wgrelays:, got \"\(u)\"")
            }
            r.finish()
            _ = i
            if let region, let secret { c.signal.relays.append(SignalRelay(region: region, urls: urls, secret: secret)) }
        }
        for (j, u) in c.signal.selfRelayURLs.enumerated() where !FerryConfig.isRelayURL(u) {
            sig.report("self_relay_urls[\(j)]", "must start with turn:, turns:, wgrelay: or wgrelays:, got \"\(u)\"")
        }
        c.signal.nats = parseNATS(sig.table("nats"))
        sig.finish()
        c.relay = parseRelay(root.table("relay"))
        if c.listeners.contains(where: { $0.service == .relay }) && c.turn.staticAuthSecrets.isEmpty {
            turn.report("static_auth_secrets", "is required with a service = \"relay\" listener: native-relay credentials are minted and checked with it")
        }
        if c.signal.enabled {
            if !c.listeners.contains(where: { $0.transport != .udp }) {
                sink.issues.append(ConfigIssue(key: "signal.enabled", message: "signaling needs a listener with transport = \"tls\" (or \"tcp\")"))
            }
            if c.signal.tokenSecrets.isEmpty && c.signal.jwksFile.isEmpty && c.signal.jwksURL.isEmpty {
                sink.issues.append(ConfigIssue(key: "signal.token_secrets", message: "signaling needs token_secrets, jwks_file or jwks_url to authorize peers"))
            }
        }

        if c.listeners.contains(where: { $0.transport == .tls }) && c.tls.certificates.isEmpty && !c.tls.selfSigned {
            sink.issues.append(ConfigIssue(key: "tls.certificate", message: "is required when a listener has transport = \"tls\" (or set tls.self_signed = true for testing)"))
        }

        if c.listeners.contains(where: { $0.service == .turn }) && c.turn.relayIPv4 == nil && c.turn.relayIPv6 == nil {
            sink.issues.append(ConfigIssue(key: "turn.relay_ipv4", message: "is required (or turn.relay_ipv6) when a listener has service = \"turn\": the address relayed sockets bind to"))
        }
        root.finish()
        if !sink.issues.isEmpty { throw ConfigErrors(issues: sink.issues) }
        return c
    }

    /// Applies `FERRY_*` environment overrides (see docs/configuration.md).
    public mutating func applyEnvironment(_ env: [String: String]) throws(ConfigErrors) {
        var issues: [ConfigIssue] = []
        if let v = env["FERRY_WORKERS"] {
            if let n = Int(v), (0...1024).contains(n) { server.workers = n } else {
                issues.append(ConfigIssue(key: "FERRY_WORKERS", message: "must be an integer from 0 to 1024, got \"\(v)\""))
            }
        }
        if let v = env["FERRY_LOG_LEVEL"] {
            if let l = LogLevel(rawValue: v.lowercased()) { log.level = l } else {
                issues.append(ConfigIssue(key: "FERRY_LOG_LEVEL", message: "must be one of \(LogLevel.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(v)\""))
            }
        }
        if let v = env["FERRY_LOG_FORMAT"] {
            if let f = LogFormat(rawValue: v.lowercased()) { log.format = f } else {
                issues.append(ConfigIssue(key: "FERRY_LOG_FORMAT", message: "must be text or json, got \"\(v)\""))
            }
        }
        if let v = env["FERRY_ADMIN_ADDRESS"] {
            if v.isEmpty { admin.address = nil } else if let a = SocketAddress(v) { admin.address = a } else {
                issues.append(ConfigIssue(key: "FERRY_ADMIN_ADDRESS", message: "must be an address like \"127.0.0.1:9090\", got \"\(v)\""))
            }
        }
        if !issues.isEmpty { throw ConfigErrors(issues: issues) }
    }

    /// A relay URL signaling may hand out: TURN (RFC 7065) or the native relay (`wgrelay:HOST:PORT`).
    public static func isRelayURL(_ u: String) -> Bool { u.hasPrefix("turn:") || u.hasPrefix("turns:") || u.hasPrefix("wgrelay:") || u.hasPrefix("wgrelays:") }

    static func parseNATS(_ t: ConfigReader) -> NATS {
        var n = NATS()
        n.servers = t.stringArray("servers", default: [])
        for (i, u) in n.servers.enumerated() where !(u.hasPrefix("nats://") || u.hasPrefix("tls://")) {
            t.report("servers[\(i)]", "must be a nats:// or tls:// URL, got \"\(u)\"")
        }
        n.subjectPrefix = t.string("subject_prefix", default: "ferry") ?? "ferry"
        if !SubjectText.isSubject(n.subjectPrefix) {
            t.report("subject_prefix", "must be NATS tokens (letters, digits, _ and -) joined by dots, got \"\(n.subjectPrefix)\"")
        }
        n.instance = t.string("instance", default: "") ?? ""
        if !n.instance.isEmpty && !SubjectText.isToken(n.instance) {
            t.report("instance", "must be letters, digits, _ and - (up to 64), got \"\(n.instance)\"")
        }
        n.user = t.string("user", default: "") ?? ""
        n.password = t.string("password", default: "") ?? ""
        n.token = t.string("token", default: "") ?? ""
        n.credentialsFile = t.string("credentials_file", default: "") ?? ""
        n.caFile = t.string("ca_file", default: "") ?? ""
        n.certFile = t.string("cert_file", default: "") ?? ""
        n.keyFile = t.string("key_file", default: "") ?? ""
        if n.certFile.isEmpty != n.keyFile.isEmpty { t.report("cert_file", "cert_file and key_file go together") }
        n.maxPending = t.int("max_pending", default: 65536, range: 16...10_000_000)
        n.subscriptionPending = t.int("subscription_pending", default: 65536, range: 16...10_000_000)
        n.reconnectWaitMillis = t.int("reconnect_wait_ms", default: 250, range: 10...60_000)
        t.finish()
        return n
    }
}

