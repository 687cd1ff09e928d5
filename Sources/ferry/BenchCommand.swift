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


/// `ferry bench` (docs/cli.md): TURN, the native relay, or signaling.
extension Ferry {
    struct Bench: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Load any TURN server (paired allocations through it), ferryd's native relay, or its signaling (many peers routing offers).",
            discussion: """
            TURN (turn:HOST[:PORT]): works the same against ferryd and coturn (standard requests only); the peer policy must \
            let relayed addresses reach each other (ferryd does for its own). A native relay (wgrelay:HOST[:PORT], with --secret): \
            the sockets bind sessions in pairs and send WireGuard transport data. Signaling (ws://HOST[:PORT]/v1/signal, one or \
            several instances of one network): --peers peers authenticate with tokens from --token-secret, spread over the \
            URLs in turn, and --senders of them send offers to the next peer (at another instance when there are several) \
            at --rate messages/s in all; it reports delivered messages/s and latency percentiles.
            """)

        @Argument(help: "The TURN server, turn:HOST[:PORT]; a native relay, wgrelay:HOST[:PORT]; or signaling URLs, ws://HOST[:PORT]/v1/signal.") var urls: [String]
        @Option(help: "TURN long-term user.") var user: String?
        @Option(help: "TURN long-term password.") var password: String?
        @Option(help: "TURN REST shared secret.") var secret: String?
        @Option(help: "Allocations (even: they are paired).") var allocations: Int = 16
        @Option(help: "Packets (TURN) or messages (signaling) per second offered, in all.") var rate: Int = 10_000
        @Option(help: "Payload bytes per packet (16 to 1400).") var size: Int = 200
        @Option(help: "Seconds to send.") var duration: Double = 5
        @Option(help: "Signaling: peers to connect and authenticate.") var peers: Int = 1000
        @Option(help: "Signaling: how many of them send.") var senders: Int = 100
        @Option(name: .customLong("token-secret"), help: "Signaling: mint the peers' tokens from this secret (signal.token_secrets).") var tokenSecret: String?
        @Option(help: "Signaling: the peers' network.") var network: String = "bench"
        @Option(help: "Signaling: connect from 127.0.0.1 to 127.0.0.N in turn (N source addresses: ~28,000 connections each per server port).") var sources: Int = 1
        @Flag(help: "Print the summary as JSON.") var json = false
        @Flag(help: "No live progress line.") var quiet = false

        func run() throws {
            let parsed = urls.compactMap { ServerURL($0) }
            guard !parsed.isEmpty, parsed.count == urls.count else {
                printError("want turn:HOST[:PORT], or ws://HOST[:PORT]/v1/signal URLs")
                throw ExitCode(2)
            }
            if parsed.allSatisfy({ $0.kind == ServerURL.Kind.signal }) { return try signaling(parsed) }
            guard parsed.count == 1, let u = parsed.first, u.kind == ServerURL.Kind.turn || u.kind == ServerURL.Kind.native else {
                printError("\(urls.joined(separator: " ")): want one turn:HOST[:PORT] or wgrelay:HOST[:PORT], or ws:// signaling URLs")
                throw ExitCode(2)
            }
            let creds: TURNClient.Credentials
            if let user, let password {
                creds = .init(username: user, password: password)
            } else if let secret {
                creds = .rest(secret: secret, label: "ferry-bench", expiry: wallClockSeconds() + 86400)
            } else {
                printError("give --user and --password, or --secret")
                throw ExitCode(2)
            }
            var options = BenchOptions(server: u, credentials: creds)
            options.nativeSecret = secret
            options.network = network
            options.allocations = allocations
            options.rate = max(1, rate)
            options.size = size
            options.duration = max(0.1, duration)
            let bench = FerryPeer.Bench(options: options)
            do {
                try bench.setUp()
                let result = try bench.run { r in
                    guard !quiet else { return }
                    let line = "\r\(Int(r.seconds)) s: offered \(Int(r.offeredRate)) pps, relayed \(Int(r.relayedRate)) pps, p50 \(r.p50 / 1000) µs, p99 \(r.p99 / 1000) µs   "
                    printError(line, terminator: "")
                }
                if !quiet { printError("") }
                print(json ? String(decoding: result.json.encoded(), as: UTF8.self) : result.human)
            } catch {
                printError("ferry bench: \(error)")
                throw ExitCode(1)
            }
        }

        func signaling(_ parsed: [ServerURL]) throws {
            guard let tokenSecret else {
                printError("signaling: give --token-secret (one of ferryd's signal.token_secrets)")
                throw ExitCode(2)
            }
            guard parsed.allSatisfy({ $0.transport != .tls }) else {
                printError("signaling: ws:// only (the generator measures routing, not TLS; set signal.allow_plaintext)")
                throw ExitCode(2)
            }
            var options = SignalBenchOptions(urls: parsed, tokenSecret: tokenSecret)
            options.network = network
            options.peers = max(2, peers)
            options.senders = max(1, min(senders, options.peers))
            options.rate = max(1, rate)
            options.duration = max(0.1, duration)
            options.sourceAddresses = max(1, min(sources, 250))
            do {
                let result = try SignalBench(options: options).run { line in if !quiet { printError(line) } }
                print(json ? String(decoding: result.json.encoded(), as: UTF8.self) : result.human)
            } catch {
                printError("ferry bench: \(error)")
                throw ExitCode(1)
            }
        }
    }
}
