#if canImport(Glibc)
import Glibc
#endif
import FerryCore

/// Running a helper program and reading its output (`wg show`, `wg set` for `ferry tunnel`):
/// posix_spawnp with stdout and stderr on a pipe. Blocking; control path only.
public enum Subprocess {
    public struct Result: Sendable {
        public let status: Int32
        public let output: String
    }

    public static func run(_ arguments: [String]) -> Result {
        var pipe: [Int32] = [-1, -1]
        guard Glibc.pipe(&pipe) == 0 else { return Result(status: -1, output: "pipe: \(String(cString: strerror(errno)))") }
        let reader = FileDescriptor(pipe[0]), writer = FileDescriptor(pipe[1])
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, writer.raw, 1)
        posix_spawn_file_actions_adddup2(&actions, writer.raw, 2)
        posix_spawn_file_actions_addclose(&actions, reader.raw)
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ)
        _ = writer.close()
        guard rc == 0 else {
            _ = reader.close()
            return Result(status: -1, output: "\(arguments[0]): \(String(cString: strerror(rc)))")
        }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let r = try? buf.withUnsafeMutableBytes { b throws(SystemError) in try Sockets.read(reader.raw, into: b) }
            guard case .done(let n)? = r, n > 0 else { break }
            out += buf[0..<n]
        }
        _ = reader.close()
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        return Result(status: code, output: String(decoding: out, as: UTF8.self))
    }
}

/// The host's own addresses, for ICE host candidates.
public enum Interfaces {
    /// IPv4 addresses of interfaces that are up, except loopback, link-local and `excluding`.
    public static func ipv4Addresses(excluding: String? = nil) -> [IPAddress] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var out: [IPAddress] = []
        var p = list
        while let a = p {
            defer { p = a.pointee.ifa_next }
            guard let sa = a.pointee.ifa_addr, sa.pointee.sa_family == sa_family_t(AF_INET),
                  a.pointee.ifa_flags & UInt32(IFF_UP) != 0, a.pointee.ifa_flags & UInt32(IFF_LOOPBACK) == 0,
                  let s = SocketAddress(storage: UnsafeRawPointer(sa)) else { continue }
            if s.ip.ipv4 >> 16 == 0xA9FE { continue }  // 169.254/16
            if let excluding, String(cString: a.pointee.ifa_name) == excluding { continue }
            if !out.contains(s.ip) { out.append(s.ip) }
        }
        return out
    }
}
