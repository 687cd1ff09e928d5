import FerryCore
import TOMLKit
import FerrySystem

/// One problem in a config file: the dotted key it concerns and what is wrong with it.
public struct ConfigIssue: Error, Equatable, Sendable, CustomStringConvertible {
    public let key: String
    public let message: String
    public init(key: String, message: String) {
        self.key = key
        self.message = message
    }
    public var description: String { key.isEmpty ? message : "\(key): \(message)" }
}

/// All problems found in one file: validation goes on after the first, so `ferry config check`
/// shows everything at once.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public let issues: [ConfigIssue]
    public init(issues: [ConfigIssue]) { self.issues = issues }
    public var description: String { issues.map(\.description).joined(separator: "\n") }
}

/// Walks one TOML table, reading typed values with defaults and ranges, remembering which keys
/// were read so that every key left over is reported as unknown. Errors name the full dotted key.
final class ConfigReader {
    let table: TOMLTable?
    let prefix: String
    private var seen: Set<String> = []
    private let sink: IssueSink

    final class IssueSink {
        var issues: [ConfigIssue] = []
        /// Every leaf key read, present or not, with array indexes written `[]`.
        var asked: Set<String> = []
    }

    /// A TOML document's root table, or its syntax error as a keyless issue.
    static func parseTOML(_ text: String) throws(ConfigErrors) -> TOMLTable {
        // Two inputs abort TOMLKit's parser (toml++ asserts on them) instead of failing: found by
        // the `config` fuzz target. They are refused here first, with where they are.
        if let problem = TOMLPrecheck.problem(text) {
            throw ConfigErrors(issues: [ConfigIssue(key: "", message: "TOML syntax: \(problem)")])
        }
        do {
            return try TOMLTable(string: text)
        } catch {
            throw ConfigErrors(issues: [ConfigIssue(key: "", message: "TOML syntax: \(error)")])
        }
    }

    init(_ table: TOMLTable?, prefix: String = "", sink: IssueSink) {
        self.table = table
        self.prefix = prefix
        self.sink = sink
    }

    func key(_ name: String) -> String { prefix.isEmpty ? name : "\(prefix).\(name)" }

    func report(_ name: String, _ message: String) {
        sink.issues.append(ConfigIssue(key: key(name), message: message))
    }

    private func value(_ name: String) -> TOMLValueConvertible? {
        seen.insert(name)
        return table?[name]
    }

    /// A leaf key is read (for `FerryConfig.parsedKeys`).
    private func leaf(_ name: String) -> TOMLValueConvertible? {
        let full = key(name).replacing(/\[\d+\]/, with: "[]")
        sink.asked.insert(full)
        return value(name)
    }

    func int(_ name: String, default def: Int, range: ClosedRange<Int>) -> Int {
        guard let v = leaf(name) else { return def }
        guard v.type == .int, let i = v.int else {
            report(name, "must be an integer from \(range.lowerBound) to \(range.upperBound), got \(describe(v))")
            return def
        }
        guard range.contains(i) else {
            report(name, "must be from \(range.lowerBound) to \(range.upperBound), got \(i)")
            return def
        }
        return i
    }

    func bool(_ name: String, default def: Bool) -> Bool {
        guard let v = leaf(name) else { return def }
        guard v.type == .bool, let b = v.bool else {
            report(name, "must be true or false, got \(describe(v))")
            return def
        }
        return b
    }

    func string(_ name: String, default def: String?) -> String? {
        guard let v = leaf(name) else { return def }
        guard v.type == .string, let s = v.string else {
            report(name, "must be a string, got \(describe(v))")
            return def
        }
        return s
    }

    func choice<E: RawRepresentable & CaseIterable>(_ name: String, default def: E) -> E where E.RawValue == String {
        guard let s = string(name, default: nil) else { return def }
        guard let e = E(rawValue: s.lowercased()) else {
            report(name, "must be one of \(E.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")), got \"\(s)\"")
            return def
        }
        return e
    }

    func address(_ name: String, default def: SocketAddress?) -> SocketAddress? {
        guard let s = string(name, default: nil) else { return def }
        guard let a = SocketAddress(s) else {
            report(name, "must be an address like \"127.0.0.1:3478\" or \"[::1]:3478\", got \"\(s)\"")
            return def
        }
        return a
    }

    /// One string or an array of them (a key that takes one value or several).
    func strings(_ name: String) -> [String] {
        guard let v = leaf(name) else { return [] }
        if v.type == .string, let s = v.string { return [s] }
        return stringArray(name, default: [])
    }

    func stringArray(_ name: String, default def: [String]) -> [String] {
        guard let v = leaf(name) else { return def }
        guard v.type == .array, let arr = v.array else {
            report(name, "must be an array of strings, got \(describe(v))")
            return def
        }
        var out: [String] = []
        for (i, e) in arr.enumerated() {
            guard e.type == .string, let s = e.string else {
                report("\(name)[\(i)]", "must be a string, got \(describe(e))")
                continue
            }
            out.append(s)
        }
        return out
    }

    func table(_ name: String) -> ConfigReader {
        guard let v = value(name) else { return ConfigReader(nil, prefix: key(name), sink: sink) }
        guard v.type == .table, let t = v.table else {
            report(name, "must be a table ([\(key(name))]), got \(describe(v))")
            return ConfigReader(nil, prefix: key(name), sink: sink)
        }
        return ConfigReader(t, prefix: key(name), sink: sink)
    }

    /// An array of tables (`[[name]]`).
    func tables(_ name: String) -> [ConfigReader] {
        guard let v = value(name) else { return [] }
        guard v.type == .array, let arr = v.array else {
            report(name, "must be an array of tables ([[\(key(name))]]), got \(describe(v))")
            return []
        }
        var out: [ConfigReader] = []
        for (i, e) in arr.enumerated() {
            guard e.type == .table, let t = e.table else {
                report("\(name)[\(i)]", "must be a table, got \(describe(e))")
                continue
            }
            out.append(ConfigReader(t, prefix: "\(key(name))[\(i)]", sink: sink))
        }
        return out
    }

    /// Reports every key of this table that was never read. Call after reading all known keys.
    func finish() {
        guard let table else { return }
        for k in table.keys.sorted() where !seen.contains(k) {
            sink.issues.append(ConfigIssue(key: key(k), message: "unknown key"))
        }
    }

    private func describe(_ v: TOMLValueConvertible) -> String {
        switch v.type {
        case .string: return "a string"
        case .int: return "an integer"
        case .double: return "a float"
        case .bool: return "a boolean"
        case .array: return "an array"
        case .table: return "a table"
        default: return "a date or time"
        }
    }
}
