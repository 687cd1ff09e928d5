import ArgumentParser
import FerryConfig
import FerrySignal
import FerryWire
import FerrySystem

/// ferry: the command-line tool for peers and operators.
struct Ferry: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Ferry's command-line tool.",
        version: FerryVersion.string,
        subcommands: [Version.self, Config.self, Token.self])

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
                abstract: "Validate a config file: prints every problem (by key) and exits non-zero if there is any.")

            @Argument(help: "The TOML file to check.")
            var file: String

            @Option(help: "The file ferryd runs with now: also print what a reload (SIGHUP) to FILE would apply and what needs a restart.")
            var running: String?

            func run() throws {
                let cfg = try parsed(file)
                print("\(file): OK (\(cfg.listeners.count) listener(s), \(cfg.workerCount) worker(s))")
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

Ferry.main()
