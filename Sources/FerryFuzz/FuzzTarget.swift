/// Fuzz targets: one per decoder or state machine that bytes from the network (or an operator's
/// file) reach. Each takes arbitrary bytes, must never trap on them, and checks its decoder's
/// invariants with `require`, which traps (libFuzzer reports a trap as a finding) when one fails.
///
/// The same functions run three ways: under libFuzzer (`scripts/fuzz.sh`, the `ferry-fuzz`
/// executable built with `-sanitize=fuzzer,address`), as a replay of files (`ferry-fuzz TARGET
/// FILE...` in a normal build), and in the unit tests, which replay every committed corpus and
/// crash input (`Tests/FerryFuzzTests/`), so a finding stays fixed.
public struct FuzzTarget: Sendable {
    public let name: String
    /// What the target feeds, for `ferry-fuzz --list` and docs/testing.md.
    public let summary: String
    public let run: @Sendable (UnsafeRawBufferPointer) -> Void
}

public enum FuzzTargets {
    public static let all: [FuzzTarget] = [
        FuzzTarget(name: "stun", summary: "STUN message view: parse, every attribute accessor, integrity, fingerprint",
                   run: WireTargets.stun),
        FuzzTarget(name: "framing", summary: "ChannelData and STUN framing on a TCP/TLS byte stream",
                   run: WireTargets.framing),
        FuzzTarget(name: "sniffer", summary: "the protocol sniffer of the shared TLS/STUN/HTTP port",
                   run: WireTargets.sniffer),
        FuzzTarget(name: "http-head", summary: "the HTTP/1.1 request head parser and the WebSocket upgrade",
                   run: WireTargets.httpHead),
        FuzzTarget(name: "websocket", summary: "WebSocket client frames: header parser and unmasking, frame after frame",
                   run: WireTargets.webSocket),
        FuzzTarget(name: "json", summary: "the signaling JSON reader (and its writer, by round trip)",
                   run: SignalTargets.json),
        FuzzTarget(name: "token", summary: "ferry1 tokens and JWTs, forged and validly signed with fuzzed claims",
                   run: SignalTargets.token),
        FuzzTarget(name: "jwks", summary: "JWKS documents as a JWT verifier loads them",
                   run: SignalTargets.jwks),
        FuzzTarget(name: "config", summary: "the TOML config file: a keyed error or a config, never a trap",
                   run: ConfigTarget.config),
        FuzzTarget(name: "turn-server", summary: "the TURN server driven by a script of requests, data, time steps and closes",
                   run: TURNServerTarget.run),
        FuzzTarget(name: "signal-session", summary: "signaling sessions driven by a script of messages, time steps and closes",
                   run: SignalSessionTarget.run),
        FuzzTarget(name: "signal-client", summary: "the signaling client fed a server's bytes after the upgrade, in chunks",
                   run: ClientTargets.signal),
        FuzzTarget(name: "turn-client", summary: "the TURN client driven by requests, time steps and answers to its transactions",
                   run: ClientTargets.turn),
        FuzzTarget(name: "cluster", summary: "NATS subjects and payloads between instances (signaling across ferryds)",
                   run: ClusterTarget.run),
        FuzzTarget(name: "relay", summary: "the native relay: signed binds and their challenges, raw control messages, WireGuard messages, time",
                   run: RelayTarget.run),
        FuzzTarget(name: "sealed", summary: "sealed signaling payloads: forged envelopes never open, sealed ones open once",
                   run: ClientTargets.sealed),
    ]

    public static func named(_ name: String) -> FuzzTarget? { all.first { $0.name == name } }
}

/// Traps with the invariant's text when it does not hold (a finding, under libFuzzer).
@inline(__always)
func require(_ condition: @autoclosure () -> Bool, _ what: @autoclosure () -> String,
             file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError("fuzz invariant broken: \(what())", file: file, line: line) }
}

/// Reads a fuzz input as a script: each call takes the next bytes, and an exhausted input reads
/// as zeros, so every input is a complete script.
struct FuzzReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var atEnd: Bool { offset >= bytes.count }

    mutating func byte() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u16() -> UInt16 { UInt16(byte()) << 8 | UInt16(byte()) }
    mutating func u32() -> UInt32 { UInt32(u16()) << 16 | UInt32(u16()) }

    /// One of `choices`, chosen by the next byte.
    mutating func pick<T>(_ choices: [T]) -> T { choices[Int(byte()) % choices.count] }

    /// The next `count` bytes (fewer at the end).
    mutating func take(_ count: Int) -> [UInt8] {
        let n = max(0, min(count, bytes.count - offset))
        defer { offset += n }
        return Array(bytes[offset..<(offset + n)])
    }

    /// A length-prefixed blob: one byte of length, then that many bytes.
    mutating func blob() -> [UInt8] { take(Int(byte())) }
}
