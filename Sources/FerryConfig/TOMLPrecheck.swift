/// What TOMLKit's parser (toml++ 3, in TOMLKit 0.6.0) cannot be handed: inputs on which it trips
/// an internal assertion and aborts the process (`ferry config check`, and ferryd on a SIGHUP)
/// instead of reporting a syntax error. Both were found by the `config` fuzz target; each is
/// invalid TOML anyway, so refusing it first changes no valid file's meaning.
///
/// 1. A control character (C0 but tab, LF and CR; DEL): TOML 1.0 allows none anywhere, and one
///    right after `[` aborted.
/// 2. A table header whose name starts with anything but a bare-key character or a quote
///    (`[@turn]`, `[[ {x} ]]`): toml++ checks that before every key but this one.
///
/// To tell a header from a `[` inside a value (an array spanning lines) or a string, this follows
/// just enough of TOML's lexical structure: strings of the four kinds, comments, and the bracket
/// depth of values.
enum TOMLPrecheck {
    static func problem(_ text: String) -> String? {
        let b = Array(text.utf8)
        return controlCharacter(b) ?? badTableName(b)
    }

    static func controlCharacter(_ b: [UInt8]) -> String? {
        var line = 1, lineStart = 0
        for (i, c) in b.enumerated() {
            if c == 0x0A {
                line += 1
                lineStart = i + 1
            } else if (c < 0x20 && c != 0x09 && c != 0x0D) || c == 0x7F {
                return "control character 0x\(c < 16 ? "0" : "")\(String(c, radix: 16, uppercase: true)) at line \(line), column \(i - lineStart + 1)"
            }
        }
        return nil
    }

    /// Called on text without control characters.
    static func badTableName(_ b: [UInt8]) -> String? {
        var i = 0, line = 1, lineStart = 0
        var depth = 0  // open [ and { of the value being read
        var atLineStart = true  // nothing but whitespace yet on this line
        func column(_ at: Int) -> Int { at - lineStart + 1 }
        func isBareKey(_ c: UInt8) -> Bool {
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x5F
        }
        func starts(_ s: String, at: Int) -> Bool {
            let u = Array(s.utf8)
            return at + u.count <= b.count && Array(b[at..<(at + u.count)]) == u
        }
        while i < b.count {
            let c = b[i]
            switch c {
            case 0x0A:
                line += 1
                i += 1
                lineStart = i
                atLineStart = true
                continue
            case 0x20, 0x09, 0x0D:
                i += 1
                continue
            case UInt8(ascii: "#"):
                while i < b.count && b[i] != 0x0A { i += 1 }
                continue
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                // A string: skip to its end, counting lines (multi-line kinds may span them).
                let multi = starts(c == UInt8(ascii: "\"") ? "\"\"\"" : "'''", at: i)
                i += multi ? 3 : 1
                while i < b.count {
                    if c == UInt8(ascii: "\"") && b[i] == UInt8(ascii: "\\") {
                        i += 2
                        continue
                    }
                    if b[i] == 0x0A {
                        if !multi { break }  // an unterminated string: toml++ reports it
                        line += 1
                        lineStart = i + 1
                    } else if b[i] == c && (!multi || starts(c == UInt8(ascii: "\"") ? "\"\"\"" : "'''", at: i)) {
                        i += multi ? 3 : 1
                        while multi && i < b.count && b[i] == c { i += 1 }  // up to two quotes may end the content
                        break
                    }
                    i += 1
                }
                atLineStart = false
                continue
            case UInt8(ascii: "["):
                if atLineStart && depth == 0 {
                    // A table header: `[` or `[[`, whitespace, then the first key.
                    var j = i + 1
                    if j < b.count && b[j] == UInt8(ascii: "[") { j += 1 }
                    while j < b.count && (b[j] == 0x20 || b[j] == 0x09) { j += 1 }
                    if j < b.count, !isBareKey(b[j]), b[j] != UInt8(ascii: "\""), b[j] != UInt8(ascii: "'"), b[j] != UInt8(ascii: "]") {
                        return "a table name must start with a letter, a digit, '-', '_' or a quote, at line \(line), column \(column(j))"
                    }
                    // The rest of the header line holds no value brackets.
                    while i < b.count && b[i] != 0x0A && b[i] != UInt8(ascii: "#") && b[i] != UInt8(ascii: "\"") && b[i] != UInt8(ascii: "'") { i += 1 }
                    atLineStart = false
                    continue
                }
                depth += 1
            case UInt8(ascii: "{"):
                depth += 1
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                depth = max(0, depth - 1)
            default:
                break
            }
            atLineStart = false
            i += 1
        }
        return nil
    }
}
