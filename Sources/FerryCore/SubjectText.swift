/// NATS subject syntax as Ferry uses it: a token is letters, digits, `_` and `-` (at most 64; no
/// `.`, `*`, `>` or whitespace, which NATS reads as separators and wildcards), a subject is up to
/// eight tokens joined by dots. Shared by the config check and the subjects signaling builds.
public enum SubjectText {
    public static func isToken(_ s: String) -> Bool {
        let u = s.utf8
        return !u.isEmpty && u.count <= 64 && u.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x2D
        }
    }

    public static func isSubject(_ s: String) -> Bool {
        let tokens = s.split(separator: ".", omittingEmptySubsequences: false)
        return !tokens.isEmpty && tokens.count <= 8 && tokens.allSatisfy { isToken(String($0)) }
    }
}
