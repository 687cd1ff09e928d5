#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem
import FerryConfig
import FerryTLS
import FerryTURN

/// What must hold before a ferryd serves, checked by one piece of code for ferryd at start and
/// for `ferry config check`, so the check never passes what ferryd refuses (docs/operations.md,
/// "Checking a config file").
///
/// - `host`: what depends on the machine: certificate and key files readable, parseable and
///   matching; the state directory usable; each relay address an address of this host; the
///   NATS client's files readable. ferryd refuses to start on any of these.
/// - `placeholders`: values that cannot be a real deployment's: the shipped placeholder secrets
///   (ferryd refuses these too), documentation addresses and example names (refused by the check
///   unless `server.lab = true`; ferryd logs them as warnings).
public enum Preflight {
    /// One certificate as loaded, for the check's report and ferryd's log.
    public struct Certificate: Sendable {
        public let source: String
        public let names: [String]
        public let notAfter: Int64
    }

    /// Why ferryd refuses to start: every problem by key, on one line (it is logged as one).
    public struct Refusal: Error, CustomStringConvertible, Sendable {
        public let issues: [ConfigIssue]
        public init(issues: [ConfigIssue]) { self.issues = issues }
        public var description: String { issues.map(\.description).joined(separator: "; ") }
    }

    public struct HostReport: Sendable {
        public var issues: [ConfigIssue] = []
        /// Not refused, but worth saying (an expired certificate: clients will refuse it).
        public var warnings: [ConfigIssue] = []
        public var certificates: [Certificate] = []
    }

    /// Whether ferryd would load certificates from files with this config (as Server does).
    static func usesCertificateFiles(_ config: FerryConfig) -> Bool {
        config.listeners.contains(where: { $0.transport != .udp }) && !config.tls.certificates.isEmpty
    }

    public static func host(_ config: FerryConfig, now: Int64 = Int64(wallClockSeconds())) -> HostReport {
        var report = HostReport()
        if usesCertificateFiles(config) { checkCertificates(config, now: now, &report) }
        if !config.server.stateDirectory.isEmpty { checkStateDirectory(config.server.stateDirectory, &report) }
        if config.signal.enabled && !config.signal.nats.servers.isEmpty { checkNATSFiles(config.signal.nats, &report) }
        if config.listeners.contains(where: { $0.service == .turn }) {
            for (key, ip) in [("turn.relay_ipv4", config.turn.relayIPv4), ("turn.relay_ipv6", config.turn.relayIPv6)] {
                guard let ip, ip != .ipv4Any, ip != .ipv6Any else { continue }
                if let problem = relayAddressProblem(ip) { report.issues.append(ConfigIssue(key: key, message: problem)) }
            }
        }
        return report
    }

    /// The same loading ferryd does (CertificatePair, then one TLSContextSet, which checks that
    /// each key matches its certificate).
    static func checkCertificates(_ config: FerryConfig, now: Int64, _ report: inout HostReport) {
        var pairs: [CertificatePair] = []
        for c in config.tls.certificates {
            do {
                pairs.append(try CertificatePair.load(certificate: c.certificate, key: c.key))
            } catch {
                report.issues.append(ConfigIssue(key: "tls.certificate", message: error.message))
            }
        }
        guard pairs.count == config.tls.certificates.count else { return }
        do {
            _ = try TLSContextSet(certificates: pairs, alpn: ["stun.turn", "http/1.1"], minimumTLS13: config.tls.minVersion == "1.3")
        } catch {
            report.issues.append(ConfigIssue(key: "tls.certificate", message: error.message))
            return
        }
        for p in pairs {
            report.certificates.append(Certificate(source: p.source, names: p.names, notAfter: p.notAfter))
            if p.notAfter <= now {
                report.warnings.append(ConfigIssue(key: "tls.certificate", message: "\(p.source) expired \(HumanUnits.duration(Double(now - p.notAfter))) ago: clients will refuse it"))
            }
        }
    }

    /// The files the NATS client loads at connect (a missing one would leave ferryd never
    /// connected: refused here, by key, as a certificate is).
    static func checkNATSFiles(_ n: FerryConfig.NATS, _ report: inout HostReport) {
        for (key, path) in [("signal.nats.ca_file", n.caFile), ("signal.nats.cert_file", n.certFile), ("signal.nats.key_file", n.keyFile),
                            ("signal.nats.credentials_file", n.credentialsFile)] where !path.isEmpty && access(path, R_OK) != 0 {
            report.issues.append(ConfigIssue(key: key, message: "\(path): \(String(cString: strerror(errno)))"))
        }
    }

    static func checkStateDirectory(_ path: String, _ report: inout HostReport) {
        var st = stat()
        if stat(path, &st) != 0 {
            report.issues.append(ConfigIssue(key: "server.state_directory", message: "\(path): \(String(cString: strerror(errno))) (create it, or let systemd's StateDirectory= do it)"))
        } else if st.st_mode & S_IFMT != S_IFDIR {
            report.issues.append(ConfigIssue(key: "server.state_directory", message: "\(path) is not a directory"))
        } else if access(path, W_OK | X_OK) != 0 {
            report.issues.append(ConfigIssue(key: "server.state_directory", message: "\(path) is not writable by this user (\(String(cString: strerror(errno))))"))
        }
    }

    /// nil when a UDP socket binds to `ip` here (what each relayed socket will do).
    public static func relayAddressProblem(_ ip: IPAddress) -> String? {
        do {
            let fd = try Sockets.udp(bind: SocketAddress(ip: ip, port: 0), options: .init(reusePort: false))
            fd.close()
            return nil
        } catch {
            let nat = ip.isIPv4 ? "turn.external_ipv4" : "turn.external_ipv6"
            return "\(ip) cannot be bound on this host (\(String(cString: strerror(error.errno)))): relayed sockets bind to it, so it must be an address of this host; behind 1:1 NAT (a cloud's public address) bind the private address and advertise the public one with \(nat)"
        }
    }

    // MARK: Placeholders and documentation values

    /// Words that only a placeholder secret contains (the shipped deploy/ferry.toml has one).
    static let placeholderWords = ["replace-with", "change-me", "changeme", "your-secret", "placeholder"]

    public static func isPlaceholderSecret(_ s: String) -> Bool {
        let lower = s.lowercased()
        return placeholderWords.contains(where: { lower.contains($0) })
    }

    /// RFC 5737 and RFC 3849: addresses for documentation, never a host's.
    static let documentationBlocks = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"].map { CIDR($0)! }

    public static func isDocumentation(_ ip: IPAddress) -> Bool { documentationBlocks.contains(where: { $0.contains(ip) }) }

    /// RFC 2606's example domains.
    public static func isExampleName(_ name: String) -> Bool {
        let n = name.lowercased().hasSuffix(".") ? String(name.lowercased().dropLast()) : name.lowercased()
        return ["example.org", "example.com", "example.net"].contains(where: { n == $0 || n.hasSuffix("." + $0) })
    }

    public struct PlaceholderReport: Sendable {
        /// Placeholder secrets: refused by the check and by ferryd, lab or not.
        public var secrets: [ConfigIssue] = []
        /// Documentation addresses and example names: refused by the check unless `server.lab`.
        public var examples: [ConfigIssue] = []
    }

    public static func placeholders(_ config: FerryConfig) -> PlaceholderReport {
        var r = PlaceholderReport()
        func secret(_ key: String, _ value: String) {
            if isPlaceholderSecret(value) {
                r.secrets.append(ConfigIssue(key: key, message: "is a placeholder, not a secret: set one of your own (openssl rand -hex 32) that your management server shares"))
            }
        }
        for s in config.turn.staticAuthSecrets { secret("turn.static_auth_secrets", s) }
        for s in config.signal.tokenSecrets { secret("signal.token_secrets", s) }
        for relay in config.signal.relays { secret("signal.relay.secret", relay.secret) }
        for u in config.turn.users { if let p = u.password { secret("turn.user.password", p) } }
        secret("admin.token", config.admin.token)
        secret("turn.nonce_secret", config.turn.nonceSecret)
        secret("signal.nats.password", config.signal.nats.password)
        secret("signal.nats.token", config.signal.nats.token)

        func address(_ key: String, _ ip: IPAddress?) {
            guard let ip, isDocumentation(ip) else { return }
            r.examples.append(ConfigIssue(key: key, message: "\(ip) is a documentation address (RFC 5737/3849), not this relay's: set the address peers reach"))
        }
        address("turn.relay_ipv4", config.turn.relayIPv4)
        address("turn.relay_ipv6", config.turn.relayIPv6)
        address("turn.external_ipv4", config.turn.externalIPv4)
        address("turn.external_ipv6", config.turn.externalIPv6)
        for l in config.listeners { address("listener.address", l.address.ip) }
        func name(_ key: String, _ value: String) {
            guard isExampleName(value) else { return }
            r.examples.append(ConfigIssue(key: key, message: "\"\(value)\" is an example name (RFC 2606): set your relay's own domain"))
        }
        name("turn.realm", config.turn.realm)
        for url in config.signal.selfRelayURLs { name("signal.self_relay_urls", host(ofURL: url)) }
        for relay in config.signal.relays { for url in relay.urls { name("signal.relay.urls", host(ofURL: url)) } }
        return r
    }

    /// The host of `turn:HOST:PORT?…`, `turns:[v6]:PORT`, `stun:HOST`.
    static func host(ofURL url: String) -> String {
        var rest = Substring(url)
        if let colon = rest.firstIndex(of: ":") { rest = rest[rest.index(after: colon)...] }
        if rest.hasPrefix("//") { rest = rest.dropFirst(2) }
        if rest.hasPrefix("[") { return String(rest.dropFirst().prefix(while: { $0 != "]" })) }
        return String(rest.prefix(while: { $0 != ":" && $0 != "?" && $0 != "/" }))
    }
}
