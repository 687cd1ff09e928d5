#if canImport(Glibc)
import Glibc
#endif
import FerrySystem
import FerryWire

/// Small secrets ferryd keeps across restarts in `server.state_directory`.
enum StateFiles {
    /// The contents of `directory/name` (hex), creating it with `bytes` random bytes (mode
    /// 0600) when absent. Returns nil if the directory cannot be used.
    static func secret(directory: String, name: String, bytes: Int) throws(SystemError) -> [UInt8] {
        let path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
        if let f = fopen(path, "r") {
            defer { fclose(f) }
            var buf = [UInt8](repeating: 0, count: 256)
            let n = fread(&buf, 1, buf.count, f)
            let text = String(decoding: buf[0..<n], as: UTF8.self).trimmingWhitespace()
            if let key = Crypto.unhex(text), !key.isEmpty { return key }
            throw SystemError(call: "read \(path): not a hex secret", errno: EINVAL)
        }
        let key = Crypto.randomBytes(bytes)
        try Files.createExclusive(path, mode: 0o600, contents: Array((Crypto.hex(key) + "\n").utf8))
        return key
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
