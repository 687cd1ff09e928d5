import FerryConfig

/// The config file: raw text, or a file put together from the documented keys with values of
/// every shape (the keys' own examples, numbers at and past their ranges, wrong types), as an
/// operator might mistype it. Every outcome is a config or errors that each name their key.
enum ConfigTarget {
    static let names: [String] = FerryConfig.keys.flatMap(\.names)
    static let examples: [String] = FerryConfig.keys.flatMap { $0.fields.flatMap { $0.example.map(\.1) } }
    static let shapes: [String] = ["0", "-1", "1", "65535", "65536", "9223372036854775807", "-9223372036854775808", "1e999", "nan",
                                   "inf", "0.5", "true", "\"\"", "\"x\"", "[]", "[1, \"a\"]", "{}", "{ a = 1 }", "\"127.0.0.1:0\"",
                                   "\"[::1]:3478\"", "\"0.0.0.0/0\"", "\"::/0\"", "\"256.1.1.1/33\"", "\"\\u0000\"", "1979-05-27",
                                   "\"\(String(repeating: "s", count: 300))\""]

    static func config(_ b: UnsafeRawBufferPointer) {
        var r = FuzzReader(b)
        let text: String
        if r.byte() % 4 == 0 {
            text = String(decoding: r.take(b.count), as: UTF8.self)
        } else {
            var plain: [String] = [], arrays: [String] = []
            while !r.atEnd {
                let name = r.pick(names)
                let value = r.byte() % 2 == 0 ? r.pick(examples) : r.pick(shapes)
                if let bracket = name.range(of: "[].") {
                    arrays.append("[[\(name[..<bracket.lowerBound])]]\n\(name[bracket.upperBound...]) = \(value)")
                } else {
                    plain.append("\(name) = \(value)")
                }
            }
            text = (plain + arrays).joined(separator: "\n")
        }
        do {
            let config = try FerryConfig.parse(text)
            let plan = FerryConfig.reloadPlan(running: FerryConfig(), next: config)
            require(plan.applied.count + plan.needsRestart.count <= names.count, "a reload plan names known keys")
        } catch {
            require(!error.issues.isEmpty, "a refused file says why")
            for issue in error.issues {
                require(!issue.key.isEmpty || issue.message.hasPrefix("TOML syntax"), "every problem but a syntax error names its key: \(issue)")
            }
        }
    }
}
