/// The `ferry tunnel` config file (docs/cli.md): the same settings as its flags, checked like
/// ferryd's file (unknown keys and wrong types are errors, by key).
///
/// ```toml
/// interface = "wg0"                     # or [[peer]] tables, without WireGuard
/// signal = "wss://relay.example.org/v1/signal"   # or several: ["wss://a…", "wss://b…"] (failover in order)
/// token_file = "/etc/ferry/tunnel.token" # or token = "ferry1.…"
/// ca = "/etc/ferry/ca.pem"              # optional
/// port = 51900                          # optional: the ICE socket's UDP port
/// relay_only = false
/// proxy = false                                    # true: no shared port, no native relay
/// status_file = "/run/ferry/tunnel-wg0.json"
/// state_file = "/var/lib/ferry/tunnel-wg0.state"
/// private_key_file = "/etc/wireguard/wg0.key"   # only with [[peer]] (WireGuard mode reads the interface's)
/// [[peer]]
/// key = "…"                             # a WireGuard public key
/// deliver_to = "127.0.0.1:51820"
/// ```
public struct TunnelFile: Sendable, Equatable {
    public struct Peer: Sendable, Equatable {
        public var key: String
        public var deliverTo: String
        public init(key: String, deliverTo: String) {
            self.key = key
            self.deliverTo = deliverTo
        }
    }

    public var interface: String?
    /// Signaling URLs, tried in order (the next when one is lost or unreachable).
    public var signals: [String] = []
    public var token: String?
    public var tokenFile: String?
    public var ca: String?
    public var insecure = false
    public var port = 0
    public var relayOnly = false
    public var proxy = false
    public var statusFile: String?
    public var stateFile: String?
    public var privateKeyFile: String?
    public var peers: [Peer] = []

    public init() {}

    public static func parse(_ text: String) throws(ConfigErrors) -> TunnelFile {
        let sink = ConfigReader.IssueSink()
        let root = ConfigReader(try ConfigReader.parseTOML(text), sink: sink)
        var f = TunnelFile()
        f.interface = root.string("interface", default: nil)
        f.signals = root.strings("signal")
        f.token = root.string("token", default: nil)
        f.tokenFile = root.string("token_file", default: nil)
        f.ca = root.string("ca", default: nil)
        f.insecure = root.bool("insecure", default: false)
        f.port = root.int("port", default: 0, range: 0...65535)
        f.relayOnly = root.bool("relay_only", default: false)
        f.proxy = root.bool("proxy", default: false)
        f.statusFile = root.string("status_file", default: nil)
        f.stateFile = root.string("state_file", default: nil)
        f.privateKeyFile = root.string("private_key_file", default: nil)
        for p in root.tables("peer") {
            let key = p.string("key", default: nil), to = p.string("deliver_to", default: nil)
            if key == nil { p.report("key", "is required") }
            if to == nil { p.report("deliver_to", "is required") }
            if let key, let to { f.peers.append(Peer(key: key, deliverTo: to)) }
            p.finish()
        }
        root.finish()
        if f.signals.isEmpty { root.report("signal", "is required") }
        if f.token == nil && f.tokenFile == nil { root.report("token", "is required (or token_file)") }
        if f.interface == nil && f.peers.isEmpty { root.report("interface", "is required (or [[peer]] tables)") }
        guard sink.issues.isEmpty else { throw ConfigErrors(issues: sink.issues) }
        return f
    }
}
