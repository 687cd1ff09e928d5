#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import CFerryLinux

/// Socket set-up calls. Each returns an owned descriptor; none of them is on the packet path.
public enum Sockets {
    public struct UDPOptions: Sendable {
        public var reusePort: Bool = true
        public var receiveBuffer: Int = 0
        public var sendBuffer: Int = 0
        /// Ask the kernel to coalesce GSO trains into one read (`UDP_GRO`).
        public var gro: Bool = false
        public init(reusePort: Bool = true, receiveBuffer: Int = 0, sendBuffer: Int = 0, gro: Bool = false) {
            self.reusePort = reusePort
            self.receiveBuffer = receiveBuffer
            self.sendBuffer = sendBuffer
            self.gro = gro
        }
    }

    /// A non-blocking UDP socket bound to `address` (port 0 picks one).
    public static func udp(bind address: SocketAddress, options: UDPOptions = .init()) throws(SystemError) -> FileDescriptor {
        let fd = FileDescriptor(try syscallValue("socket") {
            socket(address.family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        })
        // A failed step closes the socket here: its owner never got it (a taken relay port is
        // an ordinary failure, tried many times per Allocate).
        do {
            if !address.ip.isIPv4 { try setOption(fd.raw, Int32(IPPROTO_IPV6), ferry_ipv6_v6only, 1, "setsockopt(IPV6_V6ONLY)") }
            if options.reusePort { try setOption(fd.raw, SOL_SOCKET, SO_REUSEPORT, 1, "setsockopt(SO_REUSEPORT)") }
            try applyBuffers(fd.raw, receive: options.receiveBuffer, send: options.sendBuffer)
            if options.gro {
                // Best effort: kernels before 5.0 lack UDP_GRO; the reader then sees one datagram a slot.
                _ = try? setOption(fd.raw, ferry_sol_udp, ferry_udp_gro, 1, "setsockopt(UDP_GRO)")
            }
            try bind(fd.raw, address)
        } catch {
            fd.close()
            throw error
        }
        return fd
    }

    /// A non-blocking listening TCP socket.
    public static func tcpListener(bind address: SocketAddress, backlog: Int32 = 1024, reusePort: Bool = false) throws(SystemError) -> FileDescriptor {
        let fd = FileDescriptor(try syscallValue("socket") {
            socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        })
        do {
            try setOption(fd.raw, SOL_SOCKET, SO_REUSEADDR, 1, "setsockopt(SO_REUSEADDR)")
            if reusePort { try setOption(fd.raw, SOL_SOCKET, SO_REUSEPORT, 1, "setsockopt(SO_REUSEPORT)") }
            if !address.ip.isIPv4 { try setOption(fd.raw, Int32(IPPROTO_IPV6), ferry_ipv6_v6only, 1, "setsockopt(IPV6_V6ONLY)") }
            try bind(fd.raw, address)
            try syscallValue("listen") { listen(fd.raw, backlog) }
        } catch {
            fd.close()
            throw error
        }
        return fd
    }

    public static func bind(_ fd: Int32, _ address: SocketAddress) throws(SystemError) {
        let rc = address.withSockAddr { sa, len in Glibc.bind(fd, sa, len) }
        if rc != 0 { throw SystemError(call: "bind(\(address))", errno: errno) }
    }

    public static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, _ call: StaticString) throws(SystemError) {
        var v = value
        try syscallValue(call) { setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) }
    }

    public static func getOption(_ fd: Int32, _ level: Int32, _ name: Int32) -> Int32? {
        var v: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, level, name, &v, &len) == 0 ? v : nil
    }

    /// Sets buffer sizes; 0 keeps the kernel default. Tries SO_*BUFFORCE first (root or
    /// CAP_NET_ADMIN may exceed net.core.*mem_max), then the capped plain option.
    public static func applyBuffers(_ fd: Int32, receive: Int, send: Int) throws(SystemError) {
        if receive > 0 {
            if (try? setOption(fd, SOL_SOCKET, SO_RCVBUFFORCE, Int32(clamping: receive), "setsockopt(SO_RCVBUFFORCE)")) == nil {
                try setOption(fd, SOL_SOCKET, SO_RCVBUF, Int32(clamping: receive), "setsockopt(SO_RCVBUF)")
            }
        }
        if send > 0 {
            if (try? setOption(fd, SOL_SOCKET, SO_SNDBUFFORCE, Int32(clamping: send), "setsockopt(SO_SNDBUFFORCE)")) == nil {
                try setOption(fd, SOL_SOCKET, SO_SNDBUF, Int32(clamping: send), "setsockopt(SO_SNDBUF)")
            }
        }
    }

    /// The address a socket is bound to.
    public static func localAddress(_ fd: Int32) throws(SystemError) -> SocketAddress {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        if rc != 0 { throw SystemError(call: "getsockname", errno: errno) }
        guard let address = withUnsafePointer(to: &storage, { SocketAddress(storage: UnsafeRawPointer($0)) }) else {
            throw SystemError(call: "getsockname", errno: EAFNOSUPPORT)
        }
        return address
    }

    /// Accepts one connection, non-blocking and close-on-exec.
    /// The caller wraps the returned raw descriptor in a `FileDescriptor` (tuples cannot hold one).
    public static func accept(_ listener: Int32) throws(SystemError) -> IOResult<(Int32, SocketAddress?)> {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = try syscall("accept4") {
            ferry_accept4(listener, &storage, &len)
        }
        switch result {
        case .wouldBlock: return .wouldBlock
        case .done(let fd):
            let peer = withUnsafePointer(to: &storage) { SocketAddress(storage: UnsafeRawPointer($0)) }
            return .done((fd, peer))
        }
    }

    /// The socket type (SOCK_STREAM, SOCK_DGRAM) of a descriptor, for checking passed fds.
    public static func type(_ fd: Int32) -> Int32? { getOption(fd, SOL_SOCKET, SO_TYPE) }

    /// Makes a passed descriptor non-blocking and close-on-exec.
    public static func makeNonBlocking(_ fd: Int32) throws(SystemError) {
        let flags = try syscallValue("fcntl(F_GETFL)") { fcntl(fd, F_GETFL) }
        try syscallValue("fcntl(F_SETFL)") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
        let fdflags = try syscallValue("fcntl(F_GETFD)") { fcntl(fd, F_GETFD) }
        try syscallValue("fcntl(F_SETFD)") { fcntl(fd, F_SETFD, fdflags | FD_CLOEXEC) }
    }

    /// Reads into `buffer`; `.done(0)` is end of stream.
    @inlinable
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> IOResult<Int> {
        try syscall("read") { sysRead(fd, buffer.baseAddress, buffer.count) }
    }

    /// Writes from `buffer` without SIGPIPE.
    @inlinable
    public static func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer) throws(SystemError) -> IOResult<Int> {
        try syscall("send") { sysSend(fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL)) }
    }
}

/// Socket option numbers that Glibc's module does not export.
public enum FerrySystemConstants {
    public static let solUDP = ferry_sol_udp
    public static let udpGRO = ferry_udp_gro
    public static let udpSegment = ferry_udp_segment
}

extension Sockets {
    /// Peeks at up to `buffer.count` bytes without consuming them (protocol sniffing).
    public static func peek(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> IOResult<Int> {
        try syscall("recv(MSG_PEEK)") { recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_PEEK)) }
    }

    /// TCP_NODELAY: small TURN messages go out at once.
    public static func setNoDelay(_ fd: Int32) {
        _ = try? setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)")
    }

    /// Half-closes: our FIN goes out after what is queued, and the peer's bytes are still read
    /// (a lingering close that lets a last answer arrive before the reset).
    public static func shutdownWrite(_ fd: Int32) {
        _ = sysShutdown(fd, Int32(SHUT_WR))
    }
}
