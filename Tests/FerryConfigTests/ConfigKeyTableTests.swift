import Testing
import Foundation
import FerryConfig

/// The key table drives the docs table, the parser's keys and the reload: these tests hold the
/// three together, key by key.
@Suite struct ConfigKeyTable {
    /// A valid file with one of each array of tables; examples override its first elements.
    static let base: [(section: String, array: Bool, lines: [(String, String)])] = [
        ("turn", false, [("relay_ipv4", "\"127.0.0.1\"")]),
        ("signal", false, [("enabled", "true"), ("token_secrets", "[\"0123456789abcdef0123\"]")]),
        ("turn.user", true, [("name", "\"u\""), ("password", "\"p\"")]),
        ("tls.certificate", true, [("certificate", "\"/etc/ferry/a.pem\""), ("key", "\"/etc/ferry/a.key\"")]),
        ("signal.relay", true, [("region", "\"r\""), ("urls", "[\"turn:r.example.org:3478\"]"), ("secret", "\"0123456789abcdef0123\"")]),
        ("listener", true, [("name", "\"a\""), ("address", "\"127.0.0.1:3478\"")]),
        ("listener", true, [("name", "\"b\""), ("transport", "\"tls\""), ("address", "\"127.0.0.1:5349\"")]),
    ]

    /// The base file with `overrides` ("section.key" or "array[].key" = TOML value) applied.
    static func file(_ overrides: [(String, String)]) -> String {
        var sections = base.map { ($0.section, $0.array, $0.lines) }
        for (name, value) in overrides {
            let (section, key): (String, String)
            if let r = name.range(of: "[].") {
                (section, key) = (String(name[..<r.lowerBound]), String(name[r.upperBound...]))
            } else {
                let dot = name.lastIndex(of: ".")!
                (section, key) = (String(name[..<dot]), String(name[name.index(after: dot)...]))
            }
            let i = sections.firstIndex { $0.0 == section } ?? {
                sections.append((section, false, []))
                return sections.count - 1
            }()
            sections[i].2.removeAll { $0.0 == key }
            if value != ConfigKey.remove { sections[i].2.append((key, value)) }
        }
        // Plain tables first, then arrays of tables.
        let ordered = sections.filter { !$0.1 } + sections.filter { $0.1 }
        return ordered.map { s in
            (s.1 ? "[[\(s.0)]]" : "[\(s.0)]") + "\n" + s.2.map { "\($0.0) = \($0.1)" }.joined(separator: "\n")
        }.joined(separator: "\n\n") + "\n"
    }

    @Test func theBaseFileIsValid() throws {
        _ = try FerryConfig.parse(Self.file([]))
    }

    /// Every key: its example parses, the reload plan names exactly it (and the companions its
    /// example needed), on the side the table says; a restart-only key keeps its running value.
    @Test func everyKeyIsAppliedOrReportedByName() throws {
        let running = try FerryConfig.parse(Self.file([]))
        var walked = 0
        for row in FerryConfig.keys {
            for field in row.fields {
                let text = Self.file(field.example)
                let next: FerryConfig
                do {
                    next = try FerryConfig.parse(text)
                } catch {
                    Issue.record("\(field.name): its example does not parse: \(error)\n\(text)")
                    continue
                }
                let plan = FerryConfig.reloadPlan(running: running, next: next)
                let side = row.reload == .applied ? plan.applied : plan.needsRestart
                #expect(side.contains(field.name), "\(field.name) changed but the plan says \(plan.applied) / \(plan.needsRestart)")
                let allowed = Set(field.example.map(\.0))
                #expect(Set(plan.applied + plan.needsRestart).isSubset(of: allowed),
                        "\(field.name): the plan names keys its example did not change: \(plan.applied) / \(plan.needsRestart)")
                if row.reload == .restart {
                    let again = FerryConfig.reloadPlan(running: running, next: plan.effective)
                    #expect(!again.needsRestart.contains(field.name), "\(field.name) kept its running value")
                }
                walked += 1
            }
        }
        #expect(walked == FerryConfig.keys.reduce(0) { $0 + $1.fields.count })
    }

    @Test func theTableNamesEveryKeyTheParserReadsAndNoOther() {
        let table = Set(FerryConfig.keys.flatMap(\.names))
        let parsed = FerryConfig.parsedKeys()
        #expect(table.subtracting(parsed).sorted() == [], "in the table, not read by the parser")
        #expect(parsed.subtracting(table).sorted() == [], "read by the parser, missing from the table")
    }

    @Test func docsTableIsTheKeyTable() throws {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("docs/configuration.md")
        let text = try String(contentsOf: docs, encoding: .utf8)
        let table = text.split(separator: "\n", omittingEmptySubsequences: false)
            .drop { !$0.hasPrefix("| key |") }.prefix { $0.hasPrefix("|") }.joined(separator: "\n") + "\n"
        #expect(table == FerryConfig.keysMarkdown(), "docs/configuration.md: regenerate its table with `ferry config keys`")
    }
}
