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
        case udp, tcp
    }

    /// What a listener serves.
    public enum Service: String, CaseIterable, Sendable {
        /// Plain UDP forwarding of every datagram to `forward_to`: the engine benchmark mode.
        case forward
    }

    public struct Server: Sendable, Equatable {
        /// Worker threads; 0 means one per available core.
        public var workers = 0
        public var pinWorkers = true
        /// How long a graceful stop waits for sessions to finish.
        public var drainSeconds = 10
        public var software = "ferry"
    }

    public struct Log: Sendable, Equatable {
        public var level = LogLevel.info
        public var format = LogFormat.text
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
    }

    public struct Admin: Sendable, Equatable {
        /// nil disables the admin listener.
        public var address: SocketAddress? = SocketAddress("127.0.0.1:9090")
        public var maxConnections = 64
        public var requestTimeoutSeconds = 10
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

    public init() {}

    /// The built-in development default: loopback only.
    public static var development: FerryConfig {
        FerryConfig()
    }

    /// Parses and validates TOML text. Throws `ConfigErrors` listing every problem found.
    public static func parse(_ text: String) throws(ConfigErrors) -> FerryConfig {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch {
            throw ConfigErrors(issues: [ConfigIssue(key: "", message: "TOML syntax: \(error)")])
        }
        let sink = ConfigReader.IssueSink()
        let root = ConfigReader(table, sink: sink)
        var c = FerryConfig()

        let server = root.table("server")
        c.server.workers = server.int("workers", default: 0, range: 0...1024)
        c.server.pinWorkers = server.bool("pin_workers", default: true)
        c.server.drainSeconds = server.int("drain_seconds", default: 10, range: 0...3600)
        c.server.software = server.string("software", default: "ferry") ?? "ferry"
        server.finish()

        let log = root.table("log")
        c.log.level = log.choice("level", default: LogLevel.info)
        c.log.format = log.choice("format", default: LogFormat.text)
        log.finish()

        let engine = root.table("engine")
        c.engine.batchSize = engine.int("batch_size", default: 64, range: 1...1024)
        c.engine.maxDatagram = engine.int("max_datagram", default: 2048, range: 576...65535)
        c.engine.udpReceiveBuffer = engine.int("udp_receive_buffer", default: 8 << 20, range: 0...(1 << 30))
        c.engine.udpSendBuffer = engine.int("udp_send_buffer", default: 8 << 20, range: 0...(1 << 30))
        c.engine.gro = engine.bool("gro", default: true)
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
        c.admin.requestTimeoutSeconds = admin.int("request_timeout_seconds", default: 10, range: 1...3600)
        admin.finish()

        var names: Set<String> = []
        for l in root.tables("listener") {
            let name = l.string("name", default: nil)
            let transport = l.choice("transport", default: Transport.udp)
            let address = l.address("address", default: nil)
            let service = l.choice("service", default: Service.forward)
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
            if transport == .tcp { l.report("transport", "\"tcp\" is not served yet by service \"\(service.rawValue)\"; use \"udp\"") }
            l.finish()
            if let name, let address {
                c.listeners.append(Listener(name: name, transport: transport, address: address, service: service, forwardTo: forwardTo))
            }
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

    /// The effective worker count.
    public var workerCount: Int { server.workers > 0 ? server.workers : Engine.cores }
}

extension FerryConfig.Engine {
    static var cores: Int { FerrySystem.Engine.availableCores }
}
