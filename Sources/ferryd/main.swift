import ArgumentParser
import FerryConfig
import FerryServer
import FerryWire
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The server lives until the process exits and is never torn down: its workers, loops and
/// metric closures refer to one another. Holding it here keeps that graph reachable to the end,
/// so LeakSanitizer (docs/testing.md) reports only memory lost while ferryd runs.
/// (Declared before `Ferryd.main()` runs: top-level code in main.swift initializes globals in
/// order, and one declared after the call would be reset to nil once `main()` returns.)
nonisolated(unsafe) private var runningServer: Server?

/// ferryd: the Ferry relay and signaling server.
struct Ferryd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ferryd",
        abstract: "Ferry relay server: STUN/TURN and signaling for WireGuard overlays.",
        discussion: "Without --config (or FERRY_CONFIG) it runs a safe development default on loopback.",
        version: FerryVersion.string)

    @Option(name: .shortAndLong, help: "Path of the TOML config file (env FERRY_CONFIG).")
    var config: String?

    @Option(help: "Worker threads; 0 = one per core (env FERRY_WORKERS).")
    var workers: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (env FERRY_LOG_LEVEL).")
    var logLevel: String?

    @Option(help: "Log format: text or json (env FERRY_LOG_FORMAT).")
    var logFormat: String?

    @Option(help: "Admin HTTP address, \"\" to disable (env FERRY_ADMIN_ADDRESS).")
    var adminAddress: String?

    func run() throws {
        let env = ProcessEnvironment.variables
        let path = config ?? env["FERRY_CONFIG"]
        let load: () throws -> FerryConfig = { try loadConfig(path: path, env: env) }
        var cfg: FerryConfig
        do {
            cfg = try load()
        } catch {
            printError("ferryd: invalid configuration\n\(error)")
            throw ExitCode(2)
        }
        if path == nil { addDevelopmentCredentials(&cfg) }
        let levelBox = LoggingBootstrap.start(cfg)
        let logger = Logger(label: "ferryd")
        if path == nil {
            logger.notice("no config file given: running the built-in development default (loopback only)")
        }
        let server = try Server(config: cfg, reload: path == nil ? nil : load, logger: logger, levelBox: levelBox)
        runningServer = server
        let code: Int32
        do {
            code = try server.run()
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
        if code != 0 { throw ExitCode(code) }
    }

    /// The development default gets a user and a TURN REST secret made up now, printed once.
    func addDevelopmentCredentials(_ cfg: inout FerryConfig) {
        let password = Crypto.hex(Crypto.randomBytes(12))
        let secret = Crypto.hex(Crypto.randomBytes(16))
        cfg.turn.users.append(FerryConfig.TURNUser(name: "ferry-dev", password: password, key: nil))
        cfg.turn.staticAuthSecrets.append(secret)
        let signalSecret = Crypto.hex(Crypto.randomBytes(16))
        cfg.signal.tokenSecrets.append(signalSecret)
        let adminToken = Crypto.hex(Crypto.randomBytes(16))
        cfg.admin.token = adminToken
        let listener = cfg.listeners.first.map { "\($0.address)" } ?? "-"
        print("""
            ferryd development mode: loopback only. Do not use these credentials anywhere else.
              STUN/TURN  turn:\(listener)?transport=udp   realm \(cfg.turn.realm)
              user       ferry-dev
              password   \(password)
              shared secret (TURN REST, coturn's static-auth-secret)  \(secret)
              admin      http://\(cfg.admin.address.map { "\($0)" } ?? "disabled")/  (status page; /metrics, /v1/status)
              admin token  \(adminToken)   (ferry status; curl -H 'Authorization: Bearer \(adminToken)' …/v1/allocations)
              native relay  wgrelay:127.0.0.1:3479   (stock WireGuard packets; credentials come with signaling's welcome)
              signaling  ws://127.0.0.1:3478/v1/signal, wss://127.0.0.1:5349/v1/signal
              token secret  \(signalSecret)   (ferry token --secret \(signalSecret) --network dev --peer KEY)
              check it   ferry probe --insecure --token-secret \(signalSecret) --network dev ws://127.0.0.1:3478/v1/signal turn:127.0.0.1:3478 'turn:127.0.0.1:3478?transport=tcp' 'turns:127.0.0.1:5349?transport=tcp' wgrelay:127.0.0.1:3479
            """)
        fflush(nil)
    }

    /// File (or the development default), then environment, then flags.
    func loadConfig(path: String?, env: [String: String]) throws -> FerryConfig {
        var cfg: FerryConfig
        if let path {
            guard let text = readFile(path) else {
                throw ConfigErrors(issues: [ConfigIssue(key: "", message: "cannot read \(path)")])
            }
            cfg = try FerryConfig.parse(text)
        } else {
            cfg = .development
        }
        try cfg.applyEnvironment(env)
        var flags: [String: String] = [:]
        if let workers { flags["FERRY_WORKERS"] = String(workers) }
        if let logLevel { flags["FERRY_LOG_LEVEL"] = logLevel }
        if let logFormat { flags["FERRY_LOG_FORMAT"] = logFormat }
        if let adminAddress { flags["FERRY_ADMIN_ADDRESS"] = adminAddress }
        try cfg.applyEnvironment(flags)
        return cfg
    }
}

Ferryd.main()
