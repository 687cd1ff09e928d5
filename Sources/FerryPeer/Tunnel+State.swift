import FerryClient
import FerryCore
import FerrySystem
import FerryWire

/// ferry tunnel's state file: per peer and message type, the time of the newest sealed message
/// accepted (`SealedEnvelope.highWater`). Restored at start so that an envelope opened before a
/// restart is refused after it (the nonce cache lives in memory). One line per mark:
/// `PEER-KEY-BASE64 TYPE UNIX-MILLISECONDS`; written (0600, replaced atomically) whenever a mark
/// moves, which is once per offer or answer.
extension Tunnel {
    public static func defaultStateFile(interface: String?) -> String {
        "/var/lib/ferry/tunnel-\(interface ?? "peers").state"
    }

    var stateFilePath: String { config.stateFile ?? Self.defaultStateFile(interface: config.interface) }

    /// The marks in a state file (unreadable lines are skipped: the worst case is a mark lost,
    /// which the nonce cache and the clock window still cover for 120 s).
    static func readMarks(_ text: String) -> [SealedEnvelope.Mark: UInt64] {
        var marks: [SealedEnvelope.Mark: UInt64] = [:]
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count == 3, let key = Base64.decode(String(f[0])), key.count == 32, let ms = UInt64(f[2]) else { continue }
            marks[SealedEnvelope.Mark(sender: key, type: String(f[1]))] = ms
        }
        return marks
    }

    static func writeMarks(_ marks: [SealedEnvelope.Mark: UInt64]) -> String {
        marks.map { "\(Base64.std($0.key.sender)) \($0.key.type) \($0.value)\n" }.sorted().joined()
    }

    func saveMarks() {
        if !Files.replace(stateFilePath, contents: Array(Self.writeMarks(sealer.highWater).utf8), mode: 0o600), !stateWriteFailed {
            stateWriteFailed = true
            log("tunnel: cannot write \(stateFilePath): replays from before a restart are refused only by the clock window")
        }
    }
}
