import ArgumentParser
import FerryClient
import FerryCore
import FerryConfig
import FerryPeer
import FerryPreflight
import FerrySignal
import FerrySystem
import FerryTLS
import FerryWire
#if canImport(Glibc)
import Glibc
#endif

/// ferry: the command-line tool for peers and operators.
struct Ferry: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Ferry's command-line tool.",
        version: FerryVersion.string,
        subcommands: [Tunnel.self, Probe.self, Bench.self, Status.self, Keygen.self, Pubkey.self, Token.self, Config.self, Version.self])

    struct Tunnel: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Carry a WireGuard interface's peers over Ferry: direct when hole punching works, relayed when it does not.",
            subcommands: [Run.self, Status.self])

        struct Run: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Run the agent: signaling, candidates, ICE, and a local endpoint per peer that WireGuard uses.",
                discussion: "Give --interface (the agent reads wg show IFACE dump and sets each peer's endpoint), or --peer KEY=HOST:PORT with --key (no WireGuard: a peer's packets are delivered to HOST:PORT). Flags override --config.")

            @Option(help: "A config file with the same settings (docs/cli.md).") var config: String?
            @Option(help: "The WireGuard interface.") var interface: String?
            @Option(help: "Signaling URL (wss://HOST/v1/signal). Repeatable: tried in order, the next when one is lost.") var signal: [String] = []
            @Option(help: "Signaling token (ferry1.… or a JWT).") var token: String?
            @Option(name: .customLong("token-file"), help: "Read the token from this file.") var tokenFile: String?
            @Option(help: "Private key file (only with --peer; with --interface the interface's key is used).") var key: String?
            @Option(help: "A peer without WireGuard: KEY=HOST:PORT (its packets are delivered to HOST:PORT). Repeatable.") var peer: [String] = []
            @Option(help: "CA certificates (PEM) for the signaling and TURN servers (default: the system's).") var ca: String?
            @Flag(help: "Accept unverified server certificates (development only).") var insecure = false
            @Option(help: "UDP port of the agent's ICE socket (default: any).") var port: UInt16?
            @Flag(name: .customLong("relay-only"), help: "Use relayed candidates only (never reveal host addresses).") var relayOnly = false
            @Flag(help: "Keep WireGuard's packets on the agent's local endpoints (no shared port, no native relay).") var proxy = false
            @Option(name: .customLong("status-file"), help: "Where the agent writes its status (default: /run/ferry/tunnel-IFACE.json).") var statusFile: String?
            @Option(name: .customLong("state-file"), help: "Where the agent keeps the newest sealed message accepted from each peer, so none opens twice across a restart (default: /var/lib/ferry/tunnel-IFACE.state).") var stateFile: String?

            func run() throws {
                var file = TunnelFile()
                if let config {
                    guard let text = readFile(config) else {
                        printError("\(config): cannot read the file")
                        throw ExitCode(2)
                    }
                    do throws(ConfigErrors) { file = try TunnelFile.parse(text) } catch {
                        for issue in error.issues { printError("\(config): \(issue)") }
                        throw ExitCode(2)
                    }
                }
                let interface = interface ?? file.interface
                let signalTexts = signal.isEmpty ? file.signals : signal
                let urls = signalTexts.compactMap { ServerURL($0) }.filter { $0.kind == ServerURL.Kind.signal }
                guard !urls.isEmpty, urls.count == signalTexts.count else {
                    printError("--signal must be a ws:// or wss:// URL")
                    throw ExitCode(2)
                }
                var tokenText = token ?? file.token
                if let path = tokenFile ?? file.tokenFile {
                    guard let t = readFile(path) else {
                        printError("\(path): cannot read the token")
                        throw ExitCode(2)
                    }
                    tokenText = t.split(whereSeparator: { $0 == "\n" || $0 == " " }).first.map(String.init)
                }
                guard let tokenText else {
                    printError("a token is required (--token or --token-file)")
                    throw ExitCode(2)
                }
                var cfg = TunnelConfig(signals: urls, token: tokenText)
                cfg.interface = interface
                cfg.caFile = ca ?? file.ca
                cfg.insecure = insecure || file.insecure
                cfg.port = port ?? UInt16(file.port)
                cfg.relayOnly = relayOnly || file.relayOnly
                cfg.proxy = proxy || file.proxy
                cfg.statusFile = statusFile ?? file.statusFile
                cfg.stateFile = stateFile ?? file.stateFile
                var peers: [(String, String)] = file.peers.map { ($0.key, $0.deliverTo) }
                for text in peer {
                    // KEY=HOST:PORT; the key's base64 may itself end in "=".
                    guard let cut = text.range(of: "=", options: .backwards) else { continue }
                    peers.append((String(text[..<cut.lowerBound]), String(text[cut.upperBound...])))
                }
                if interface == nil {
                    guard !peers.isEmpty, let keyFile = key ?? file.privateKeyFile, let priv = readPrivateKey(keyFile) else {
                        printError("give --interface, or --peer KEY=HOST:PORT with --key FILE")
                        throw ExitCode(2)
                    }
                    cfg.privateKey = priv
                    for (k, to) in peers {
                        guard Base64.decode(k)?.count == 32, let address = SocketAddress(to) else {
                            printError("--peer \(k)=\(to): want a base64 WireGuard public key = HOST:PORT")
                            throw ExitCode(2)
                        }
                        cfg.peers.append(.init(key: k, deliverTo: address))
                    }
                }
                do {
                    let tunnel = try FerryPeer.Tunnel(config: cfg) { line in
                        print(line)
                        fflush(nil)
                    }
                    try tunnel.run()
                } catch {
                    printError("ferry tunnel: \(error)")
                    throw ExitCode(1)
                }
            }
        }

        struct Status: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Show which path each peer of a running agent uses.")

            @Option(help: "The agent's interface (finds its default status file).") var interface: String?
            @Option(name: .customLong("status-file"), help: "The agent's status file.") var statusFile: String?
            @Flag(help: "Print the status as JSON.") var json = false

            func run() throws {
                let path = statusFile ?? FerryPeer.Tunnel.defaultStatusFile(interface: interface)
                guard let bytes = Files.read(path), let status = JSONValue.parse(bytes) else {
                    printError("\(path): no status (is ferry tunnel running?)")
                    throw ExitCode(1)
                }
                if json {
                    print(String(decoding: status.encoded(), as: UTF8.self))
                    return
                }
                print("ferry tunnel \(status["interface"]?.string ?? "(no interface)"), key \(status["key"]?.string ?? "?")")
                let signaling: String = status["signaling"]?.string ?? "?"
                let relay: String = status["relay"]?.string ?? "?"
                let relayed: String = status["relayed_address"]?.string.map { " (relayed address \($0))" } ?? ""
                print("  signaling \(signaling), relay \(relay)\(relayed)")
                let shared: String = status["shared_port"]?.string ?? "?"
                let natives = (status["native_relays"]?.array ?? []).compactMap(\.string)
                print("  WireGuard's port shared: \(shared); native relays: \(natives.isEmpty ? "none handed out" : natives.joined(separator: ", "))")
                for p in status["peers"]?.array ?? [] {
                    let key = p["key"]?.string ?? "?"
                    let route = p["route"]?.string.map { " \($0)" } ?? ""
                    let rtt = p["rtt_ms"]?.number.map { ", rtt \($0) ms" } ?? ""
                    let rx: Int = Int(p["rx_packets"]?.number ?? 0)
                    let tx: Int = Int(p["tx_packets"]?.number ?? 0)
                    var path: String = p["path"]?.string ?? "?"
                    if let endpoint = p["wireguard_endpoint"]?.string { path += " (WireGuard → \(endpoint) itself)" }
                    print("  \(key.prefix(8))…  \(path)\(route)\(rtt), \(tx) packets out, \(rx) in")
                }
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a running ferryd at a glance (its admin endpoint's /v1/status).",
            discussion: "Exit status: 0 ready, 3 not ready or draining, 1 unreachable.")

        @Argument(help: "The admin endpoint (default http://127.0.0.1:9090).") var admin: String = "http://127.0.0.1:9090"
        @Flag(help: "Print /v1/status as JSON.") var json = false

        func run() throws {
            let answer: AdminClient.Answer
            do throws(AdminClient.Failure) {
                answer = try AdminClient.get(base: admin, path: "/v1/status")
            } catch {
                printError("ferry status: \(error)")
                throw ExitCode(1)
            }
            guard answer.status == 200, let s = answer.json else {
                printError("ferry status: \(admin) answered \(answer.status)")
                throw ExitCode(1)
            }
            if json {
                print(String(decoding: s.encoded(), as: UTF8.self))
            } else {
                for line in StatusText.lines(s, admin: admin) { print(line) }
            }
            if s["ready"] != .bool(true) || s["draining"] == .bool(true) { throw ExitCode(3) }
        }
    }

    struct Keygen: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an X25519 key pair in WireGuard's base64 form (a WireGuard key pair is one).",
            discussion: "With --out, the private key goes to a new file of mode 0600 and the public key to standard output; without it, both are printed (private first).")

        @Option(help: "Write the private key to this new file (mode 0600; an existing file is never overwritten).") var out: String?

        func run() throws {
            let (priv, pub) = X25519.keyPair()
            guard let out else {
                print(Base64.std(priv))
                print(Base64.std(pub))
                return
            }
            do {
                try Files.createExclusive(out, mode: 0o600, contents: Array((Base64.std(priv) + "\n").utf8))
            } catch {
                printError("\(out): \(error)")
                throw ExitCode(1)
            }
            print(Base64.std(pub))
        }
    }

    struct Pubkey: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the public key of a private key (a file, or standard input with -), like wg pubkey.")

        @Argument(help: "The private key file, or - for standard input.") var file: String = "-"

        func run() throws {
            guard let priv = readPrivateKey(file) else { throw ExitCode(1) }
            print(Base64.std(X25519.publicKey(privateKey: priv)!))
        }
    }

    struct Probe: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a deployment from outside: STUN, TURN allocate and echo, TLS certificates, signaling; ranks relays by round trip.",
            discussion: """
            URLs: stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp], turns:HOST[:PORT][?transport=tcp], \
            ws://HOST[:PORT]/v1/signal, wss://HOST[:PORT]/v1/signal. TURN URLs use --user/--password, or --secret \
            (TURN REST), or the credentials a signaling URL's welcome hands out for that host. Exits 1 if any check fails.
            """)

        @Argument(help: "What to probe (see above).") var urls: [String]
        @Option(help: "TURN long-term user.") var user: String?
        @Option(help: "TURN long-term password.") var password: String?
        @Option(help: "TURN REST shared secret (coturn's static-auth-secret): credentials are derived from it.") var secret: String?
        @Option(help: "Signaling token (ferry1.… or a JWT).") var token: String?
        @Option(name: .customLong("token-secret"), help: "Mint a signaling token from this secret (signal.token_secrets).") var tokenSecret: String?
        @Option(help: "The network for a minted token.") var network: String = "probe"
        @Option(help: "Private key file for signaling (default: a new key per run).") var key: String?
        @Option(help: "CA certificates (PEM) to verify TLS servers with (default: the system's).") var ca: String?
        @Flag(help: "Report but do not fail on an unverified TLS certificate (an expired one still fails).") var insecure = false
        @Flag(help: "Print JSON instead of text.") var json = false
        @Option(help: "Seconds each check may take.") var timeout: Double = 3
        @Option(help: "Probe again every this many seconds (until interrupted); the exit status is the last round's.") var interval: Double?

        func run() throws {
            var parsed: [ServerURL] = []
            for u in urls {
                guard let s = ServerURL(u) else {
                    printError("\(u): not a stun:, turn:, turns:, ws:// or wss:// URL")
                    throw ExitCode(2)
                }
                parsed.append(s)
            }
            if (user == nil) != (password == nil) {
                printError("--user and --password go together")
                throw ExitCode(2)
            }
            var options = ProbeOptions()
            if let user, let password { options.credentials = .init(username: user, password: password) }
            options.restSecret = secret
            options.token = token
            options.tokenSecret = tokenSecret
            options.network = network
            options.caFile = ca
            options.insecure = insecure
            options.timeoutMilliseconds = Int32(max(0.1, timeout) * 1000)
            if let key {
                guard let priv = readPrivateKey(key) else { throw ExitCode(2) }
                options.privateKey = priv
            }
            while true {
                var prober = Prober(options: options)
                let report = prober.run(parsed)
                if json { print(String(decoding: report.json.encoded(), as: UTF8.self)) } else { print(report.human, terminator: "") }
                fflush(nil)
                guard let interval else { if !report.ok { throw ExitCode(1) }; return }
                usleep(UInt32(max(0.1, interval) * 1_000_000))
            }
        }
    }

    struct Token: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Mint a signaling token (ferry1.…) from a shared secret (ferryd's signal.token_secrets).")

        @Option(help: "The shared secret.") var secret: String
        @Option(help: "The network the peer belongs to.") var network: String
        @Option(help: "Bind the token to this WireGuard public key (base64).") var peer: String?
        @Option(help: "Lifetime in seconds (negative makes an already expired token, for tests).") var ttl: Int64 = 3600

        func run() throws {
            guard !network.isEmpty else {
                printError("--network must not be empty")
                throw ExitCode(2)
            }
            if let peer, Base64.decode(peer)?.count != 32 {
                printError("--peer must be a base64 WireGuard public key (32 bytes)")
                throw ExitCode(2)
            }
            let expiry = max(0, Int64(wallClockSeconds()) + ttl)
            print(SignalToken.mint(secret: secret, network: network, peer: peer, expiry: UInt64(expiry)))
        }
    }

    struct Version: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the version.")
        func run() { print("ferry \(FerryVersion.string)") }
    }

    struct Config: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Work with ferryd config files.", subcommands: [Check.self, Keys.self])

        struct Keys: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Print every config key as a Markdown table: default, allowed values, override, whether SIGHUP applies it, meaning.")

            func run() { print(FerryConfig.keysMarkdown(), terminator: "") }
        }

        struct Check: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Validate a config file as ferryd would before serving: prints every problem (by key) and exits non-zero if there is any.",
                discussion: """
                Besides the file itself: certificate and key files readable, parseable and matching; the state \
                directory usable; each relay address an address of this host (the same code ferryd runs at start); \
                no placeholder secret; no documentation address or example name unless server.lab = true.
                """)

            @Argument(help: "The TOML file to check.")
            var file: String

            @Option(help: "The file ferryd runs with now: also print what a reload (SIGHUP) to FILE would apply and what needs a restart.")
            var running: String?

            @Flag(help: "Skip what depends on this host (certificate files, state directory, relay addresses, NATS files): for a file meant for another machine.")
            var noHost = false

            func run() throws {
                let cfg = try parsed(file)
                var problems: [ConfigIssue] = []
                if !noHost {
                    let host = Preflight.host(cfg)
                    problems += host.issues
                    for w in host.warnings { printError("\(file): warning: \(w)") }
                    let now = Int64(wallClockSeconds())
                    for c in host.certificates {
                        print("certificate \(c.source): \(c.names.joined(separator: ", ")); \((c.notAfter - now) / 86400) days left")
                    }
                }
                let placeholders = Preflight.placeholders(cfg)
                problems += placeholders.secrets
                if !cfg.server.lab { problems += placeholders.examples }
                if !problems.isEmpty {
                    for issue in problems { printError("\(file): \(issue)") }
                    throw ExitCode(1)
                }
                print("\(file): OK (\(cfg.listeners.count) listener(s), \(cfg.workerCount) worker(s)\(noHost ? "; host checks skipped" : ""))")
                if let running {
                    let plan = FerryConfig.reloadPlan(running: try parsed(running), next: cfg)
                    print("reload applies: \(plan.applied.isEmpty ? "nothing" : plan.applied.joined(separator: ", "))")
                    print("needs a restart: \(plan.needsRestart.isEmpty ? "nothing" : plan.needsRestart.joined(separator: ", "))")
                }
            }

            private func parsed(_ path: String) throws -> FerryConfig {
                guard let text = readFile(path) else {
                    printError("\(path): cannot read the file")
                    throw ExitCode(2)
                }
                do {
                    return try FerryConfig.parse(text)
                } catch {
                    for issue in error.issues { printError("\(path): \(issue)") }
                    throw ExitCode(1)
                }
            }
        }
    }
}

/// A WireGuard private key (base64, one line) from a file or standard input ("-").
func readPrivateKey(_ path: String) -> [UInt8]? {
    let text: String?
    if path == "-" {
        text = readLine(strippingNewline: true)
    } else {
        text = Files.read(path).map { String(decoding: $0, as: UTF8.self) }
    }
    guard let text else {
        printError("\(path): cannot read the key")
        return nil
    }
    let trimmed = text.split(whereSeparator: { $0 == "\n" || $0 == "\r" || $0 == " " }).first.map(String.init) ?? ""
    guard let key = Base64.decode(trimmed), key.count == 32 else {
        printError("\(path): not a WireGuard key (32 bytes in base64)")
        return nil
    }
    return key
}

Ferry.main()
