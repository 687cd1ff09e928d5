#if canImport(Glibc)
import Glibc
#endif
import CFerryLinux
import FerryCore

/// A host name that did not resolve.
public struct ResolveError: Error, CustomStringConvertible, Sendable {
    public let host: String
    public let reason: String
    public var description: String { "cannot resolve \(host): \(reason)" }
}

/// Name resolution for clients (`ferry probe`, `ferry tunnel`): the system resolver, blocking;
/// never on a server worker.
public enum Resolver {
    /// The addresses of `host` (a name or a literal), IPv4 first.
    public static func resolve(_ host: String, port: UInt16) throws(ResolveError) -> [SocketAddress] {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if let ip = IPAddress(bare) { return [SocketAddress(ip: ip, port: port)] }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(bare, String(port), &hints, &res)
        guard rc == 0 else { throw ResolveError(host: host, reason: String(cString: gai_strerror(rc))) }
        defer { freeaddrinfo(res) }
        var out: [SocketAddress] = []
        var a = res
        while let p = a {
            if let s = SocketAddress(storage: UnsafeRawPointer(p.pointee.ai_addr)), !out.contains(s) { out.append(s) }
            a = p.pointee.ai_next
        }
        guard !out.isEmpty else { throw ResolveError(host: host, reason: "no addresses") }
        return out.sorted { $0.ip.isIPv4 && !$1.ip.isIPv4 }
    }
}

extension Sockets {
    /// A non-blocking TCP connection to `address`, established within the timeout.
    public static func connectTCP(_ address: SocketAddress, timeoutMilliseconds: Int32) throws(SystemError) -> FileDescriptor {
        let fd = FileDescriptor(try syscallValue("socket") {
            socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        })
        let rc = address.withSockAddr { sa, len in Glibc.connect(fd.raw, sa, len) }
        if rc != 0 {
            var err = errno
            if err == EINPROGRESS {
                err = ETIMEDOUT
                if wait(fd.raw, forWriting: true, timeoutMilliseconds: timeoutMilliseconds) {
                    err = getOption(fd.raw, SOL_SOCKET, SO_ERROR) ?? EIO
                }
            }
            if err != 0 {
                _ = fd.close()
                throw SystemError(call: "connect(\(address))", errno: err)
            }
        }
        setNoDelay(fd.raw)
        return fd
    }

    /// A non-blocking UDP socket bound to `local` (port 0 picks one), not connected: it talks to
    /// a server and, for the tunnel, to peers.
    public static func udpClient(local: SocketAddress) throws(SystemError) -> FileDescriptor {
        try udp(bind: local, options: .init(reusePort: false))
    }

    /// Waits until `fd` is readable (or writable); false on timeout.
    public static func wait(_ fd: Int32, forWriting: Bool = false, timeoutMilliseconds: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(forWriting ? POLLOUT : POLLIN), revents: 0)
        while true {
            let rc = poll(&p, 1, timeoutMilliseconds)
            if rc < 0 && errno == EINTR { continue }
            return rc > 0
        }
    }

    /// One datagram to `to`.
    public static func sendDatagram(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, to: SocketAddress) throws(SystemError) -> IOResult<Int> {
        try syscall("sendto") {
            to.withSockAddr { sa, len in sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL), sa, len) }
        }
    }

    /// One datagram and its source.
    public static func receiveDatagram(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> IOResult<(Int, SocketAddress?)> {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let r = try syscall("recvfrom") {
            withUnsafeMutablePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, buffer.baseAddress, buffer.count, 0, $0, &len) }
            }
        }
        switch r {
        case .wouldBlock: return .wouldBlock
        case .done(let n): return .done((n, withUnsafePointer(to: &storage) { SocketAddress(storage: UnsafeRawPointer($0)) }))
        }
    }
}
