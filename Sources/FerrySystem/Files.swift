#if canImport(Glibc)
import Glibc
#endif

/// Reading small files whole (configs, certificates, keys, test vectors). Not for the packet path.
public enum Files {
    /// The file's bytes, or nil when it cannot be read.
    public static func read(_ path: String) -> [UInt8]? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, f)
            if n > 0 { out.append(contentsOf: chunk[0..<n]) }
            if n < chunk.count { break }
        }
        return ferror(f) == 0 ? out : nil
    }

    /// Creates `path` (which must not exist) with `mode` and writes `contents` (secrets in the
    /// state directory: O_EXCL, so two processes never both create one).
    public static func createExclusive(_ path: String, mode: mode_t, contents: [UInt8]) throws(SystemError) {
        let raw = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        if raw < 0 { throw SystemError(call: "create \(path)", errno: errno) }
        let fd = FileDescriptor(raw)
        defer { fd.close() }
        let ok = contents.withUnsafeBytes { writeAll(raw, $0) }
        if !ok { throw SystemError(call: "write \(path)", errno: errno) }
    }

    /// Replaces `path` atomically (a temporary file renamed over it), creating the parent
    /// directory if needed: status files other processes read whole. False on failure.
    @discardableResult
    public static func replace(_ path: String, contents: [UInt8], mode: mode_t = 0o644) -> Bool {
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            _ = mkdir(String(path[..<slash]), 0o755)
        }
        let temporary = path + ".tmp"
        let raw = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard raw >= 0 else { return false }
        let fd = FileDescriptor(raw)
        let ok = contents.withUnsafeBytes { writeAll(raw, $0) }
        _ = fd.close()
        return ok && rename(temporary, path) == 0
    }
}

/// Kernel settings read from /proc (at start and on reload; never per packet).
public enum KernelSettings {
    /// `net.ipv4.ip_local_port_range` (IPv6 uses it too): where the kernel picks the ports of
    /// outgoing and unbound sockets. Nil where /proc cannot be read.
    public static func ephemeralPortRange(path: String = "/proc/sys/net/ipv4/ip_local_port_range") -> ClosedRange<Int>? {
        guard let bytes = Files.read(path) else { return nil }
        let parts = String(decoding: bytes, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" })
        guard parts.count == 2, let lo = Int(parts[0]), let hi = Int(parts[1]), lo <= hi else { return nil }
        return lo...hi
    }
}
