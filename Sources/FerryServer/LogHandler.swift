#if canImport(Glibc)
import Glibc
#endif
import Logging
import FerrySystem
import Synchronization

/// The process-wide log level, changed by reload. Read by every `FerryLogHandler`.
public final class LogLevelBox: Sendable {
    private let raw: Atomic<UInt8>
    public init(_ level: Logger.Level) { raw = Atomic(LogLevelBox.code(level)) }
    public var level: Logger.Level {
        get { Logger.Level.allCases[Int(raw.load(ordering: .relaxed))] }
        set { raw.store(LogLevelBox.code(newValue), ordering: .relaxed) }
    }
    static func code(_ l: Logger.Level) -> UInt8 { UInt8(Logger.Level.allCases.firstIndex(of: l)!) }
}

/// Writes one line per record to stderr, as text or as JSON (one object per line, for
/// journald or a log shipper). Under systemd the journal adds its own timestamp; the text form
/// still carries one so that logs read outside the journal make sense.
public struct FerryLogHandler: LogHandler {
    public enum Format: Sendable { case text, json }
    public var metadata: Logger.Metadata = [:]
    public let label: String
    let format: Format
    let levelBox: LogLevelBox

    public init(label: String, format: Format, level: LogLevelBox) {
        self.label = label
        self.format = format
        self.levelBox = level
    }

    public var logLevel: Logger.Level {
        get { levelBox.level }
        set { levelBox.level = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        let line: String
        switch format {
        case .text:
            // logfmt: a value with a space, `=`, a quote, a backslash or a control character (or
            // an empty one) is quoted and escaped, so a value from a client (a TURN REST
            // username, a network name) can neither add fields nor start a line of its own.
            let meta = all.isEmpty ? "" : " " + all.sorted { $0.key < $1.key }.map { "\(FerryLogHandler.logfmt($0.key))=\(FerryLogHandler.logfmt("\($0.value)"))" }.joined(separator: " ")
            line = "\(FerryLogHandler.timestamp()) \(event.level) \(label): \(FerryLogHandler.escapeControls("\(event.message)"))\(meta)\n"
        case .json:
            var fields = "\"ts\":\"\(FerryLogHandler.timestamp())\",\"level\":\"\(event.level)\",\"logger\":\(FerryLogHandler.quote(label)),\"msg\":\(FerryLogHandler.quote("\(event.message)"))"
            for (k, v) in all.sorted(by: { $0.key < $1.key }) { fields += ",\(FerryLogHandler.quote(k)):\(FerryLogHandler.json(v))" }
            line = "{\(fields)}\n"
        }
        Array(line.utf8).withUnsafeBytes { _ = writeAll(2, $0) }
    }

    /// A metadata value in JSON: integers and finite numbers given as such (`.stringConvertible`)
    /// are JSON numbers, so a log shipper sums them without parsing; everything else a string.
    static func json(_ v: Logger.MetadataValue) -> String {
        if case .stringConvertible(let c) = v {
            switch c {
            case let n as any BinaryInteger: return "\(n)"
            case let d as Double where d.isFinite: return "\(d)"
            default: break
            }
        }
        return quote("\(v)")
    }

    /// A logfmt value: bare when it is a plain token, else quoted with JSON's escapes.
    static func logfmt(_ s: String) -> String {
        let plain = !s.isEmpty && s.unicodeScalars.allSatisfy { u in
            u.value > 0x20 && u.value != 0x7F && u != "=" && u != "\"" && u != "\\" && !(0x80...0x9F).contains(u.value)
        }
        return plain ? s : quote(s)
    }

    /// A message on one line: control characters written as escapes.
    static func escapeControls(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return s }
        let q = quote(s)
        return String(q.dropFirst().dropLast())
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return iso(ts.tv_sec, milliseconds: Int32(ts.tv_nsec / 1_000_000))
    }

    /// Unix seconds in UTC as `2026-11-27T14:05:09Z` (with milliseconds: `…09.123Z`).
    static func iso(_ seconds: time_t, milliseconds: Int32? = nil) -> String {
        var t = tm()
        var secs = seconds
        gmtime_r(&secs, &t)
        func pad(_ v: Int32, _ n: Int = 2) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, n - s.count)) + s
        }
        let fraction = milliseconds.map { ".\(pad($0, 3))" } ?? ""
        return "\(t.tm_year + 1900)-\(pad(t.tm_mon + 1))-\(pad(t.tm_mday))T\(pad(t.tm_hour)):\(pad(t.tm_min)):\(pad(t.tm_sec))\(fraction)Z"
    }
}
