#if canImport(Glibc)
import Glibc
#endif
import FerrySystem

/// Reads a whole text file; nil when it cannot be read.
public func readFile(_ path: String) -> String? {
    Files.read(path).map { String(decoding: $0, as: UTF8.self) }
}

/// Writes a line to standard error.
public func printError(_ text: String, terminator: String = "\n") {
    let line = Array((text + terminator).utf8)
    line.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
}

/// The process environment as a dictionary.
public enum ProcessEnvironment {
    public static var variables: [String: String] {
        var out: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") {
                out[String(s[..<eq])] = String(s[s.index(after: eq)...])
            }
            p += 1
        }
        return out
    }
}
