import ArgumentParser
import FerryConfig

/// ferry: the command-line tool for peers and operators.
struct Ferry: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Ferry's command-line tool.",
        version: FerryVersion.string,
        subcommands: [Version.self, Config.self])

    struct Version: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the version.")
        func run() { print("ferry \(FerryVersion.string)") }
    }

    struct Config: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Work with ferryd config files.", subcommands: [Check.self])

        struct Check: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Validate a config file: prints every problem (by key) and exits non-zero if there is any.")

            @Argument(help: "The TOML file to check.")
            var file: String

            func run() throws {
                guard let text = readFile(file) else {
                    printError("\(file): cannot read the file")
                    throw ExitCode(2)
                }
                do {
                    let cfg = try FerryConfig.parse(text)
                    print("\(file): OK (\(cfg.listeners.count) listener(s), \(cfg.workerCount) worker(s))")
                } catch {
                    for issue in error.issues { printError("\(file): \(issue)") }
                    throw ExitCode(1)
                }
            }
        }
    }
}

Ferry.main()
