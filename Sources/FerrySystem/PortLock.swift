#if canImport(Glibc)
import Glibc
#endif
import CFerryLinux

/// One ferryd per port. Listeners bind with `SO_REUSEPORT` (one socket per worker), which also
/// lets a second process of the same user join the group silently and take a share of the
/// flows, breaking every allocation hashed to it. Before binding a port, ferryd takes a lock
/// named after the transport and port: a listening Unix socket in the abstract namespace
/// (`@ferryd/udp/3478`). It belongs to the network namespace, like the port; it needs no file or
/// directory, and the kernel releases it when the process exits, however it exits. The holder is
/// found with `SO_PEERCRED` on a connection to the lock, so the refusal names it.
public enum PortLock {
    public struct Held: Error, CustomStringConvertible {
        public let name: String
        public let pid: Int32?

        public var description: String {
            let port = name.split(separator: "/").joined(separator: " port ")
            return "\(port) is already served by another ferryd\(pid.map { " (pid \($0))" } ?? ""): a second one would join its "
                + "SO_REUSEPORT group and take a share of its flows, so there is one ferryd per port"
        }
    }

    /// Takes the lock `name` (for example "udp/3478"); keep the descriptor open as long as the
    /// port is used. Throws `Held` if another process has it.
    public static func acquire(_ name: String) throws -> FileDescriptor {
        let fd = FileDescriptor(try syscallValue("socket(AF_UNIX)") {
            socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        })
        var (address, length) = abstractAddress("ferryd/" + name)
        let rc = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.raw, $0, length) }
        }
        if rc != 0 {
            let e = errno
            fd.close()
            if e == EADDRINUSE { throw Held(name: name, pid: holder(name)) }
            throw SystemError(call: "bind(@ferryd/\(name))", errno: e)
        }
        // Listening, so that the next one can connect and ask who holds it.
        _ = listen(fd.raw, 1)
        return fd
    }

    /// The process holding the lock `name`, if it answers.
    static func holder(_ name: String) -> Int32? {
        guard let fd = try? syscallValue("socket(AF_UNIX)", { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
        else { return nil }
        let owned = FileDescriptor(fd)
        defer { owned.close() }
        var (address, length) = abstractAddress("ferryd/" + name)
        let rc = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) }
        }
        guard rc == 0 else { return nil }
        var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
        guard ferry_peer_credentials(fd, &pid, &uid, &gid) == 0 else { return nil }
        return pid
    }

    private static func abstractAddress(_ name: String) -> (sockaddr_un, socklen_t) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(name.utf8.prefix(MemoryLayout.size(ofValue: address.sun_path) - 1))
        withUnsafeMutableBytes(of: &address.sun_path) { path in
            path[0] = 0  // the abstract namespace: a leading NUL, no file
            for (i, b) in bytes.enumerated() { path[i + 1] = b }
        }
        let length = MemoryLayout<sa_family_t>.size + 1 + bytes.count
        return (address, socklen_t(length))
    }
}
