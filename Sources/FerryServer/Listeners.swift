#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem
import FerryConfig
import Logging

/// Where each listener's sockets come from: systemd's passed descriptors (matched by
/// `FileDescriptorName=`) or sockets ferryd binds itself. The registry is the one place that
/// knows this, so later listeners (TCP, TLS, the native relay port) get activation for free.
///
/// UDP under activation: the unit declares one `ListenDatagram=` per worker with `ReusePort=yes`
/// (deploy/systemd/ferryd.socket); the n-th passed socket of a name goes to worker n mod W.
/// ferryd cannot add sockets to a reuseport group systemd created (the kernel requires the same
/// owner uid, and DynamicUser differs), so fewer sockets than workers leaves workers idle for
/// that listener, which is logged.
struct ListenerRegistry {
    private(set) var passed: [String: [Int32]] = [:]
    let logger: Logger
    /// One `PortLock` per transport and port this ferryd listens on, held until it exits.
    private(set) var locks: [String: FileDescriptor] = [:]

    init(passed sockets: [Systemd.PassedSocket], logger: Logger) {
        self.logger = logger
        for s in sockets { passed[s.name, default: []].append(s.fd) }
    }

    var activated: Bool { !passed.isEmpty }

    /// Passed sockets of `name`, taken (ownership moves to the caller).
    mutating func take(_ name: String) -> [Int32] {
        passed.removeValue(forKey: name) ?? []
    }

    /// Closes passed sockets that no listener claimed, with a warning naming them.
    mutating func closeUnclaimed() {
        for (name, fds) in passed {
            logger.warning("systemd passed sockets no listener uses; closing them",
                           metadata: ["socket.name": "\(name)", "count": "\(fds.count)"])
            for fd in fds { FileDescriptor(fd).close() }
        }
        passed.removeAll()
    }

    /// Takes the port's lock (see `PortLock`) unless this ferryd holds it already. Port 0 (any
    /// free port, in tests) needs none before binding: it is locked once the kernel picked it.
    mutating func lock(_ transport: String, _ port: UInt16) throws {
        let name = "\(transport)/\(port)"
        guard port != 0, locks[name] == nil else { return }
        locks[name] = try PortLock.acquire(name)
    }

    /// One UDP socket per worker for a listener: passed ones, else bound here with SO_REUSEPORT.
    /// Returns (worker index, socket) pairs.
    mutating func udpSockets(_ listener: FerryConfig.Listener, workers: Int, options: Sockets.UDPOptions)
        throws -> [(worker: Int, fd: FileDescriptor)] {
        var out: [(worker: Int, fd: FileDescriptor)] = []
        let passed = take(listener.name)
        if !passed.isEmpty {
            for raw in passed { try lock("udp", (try? Sockets.localAddress(raw).port) ?? 0) }
            for (i, raw) in passed.enumerated() {
                let fd = FileDescriptor(raw)
                guard Sockets.type(raw) == Int32(SOCK_DGRAM.rawValue) else {
                    throw SystemError(call: "systemd socket \"\(listener.name)\" is not a datagram socket", errno: EINVAL)
                }
                try Sockets.makeNonBlocking(raw)
                try Sockets.applyBuffers(raw, receive: options.receiveBuffer, send: options.sendBuffer)
                if options.gro {
                    _ = try? Sockets.setOption(raw, FerrySystemConstants.solUDP, FerrySystemConstants.udpGRO, 1, "setsockopt(UDP_GRO)")
                }
                out.append((i % workers, fd))
            }
            if passed.count < workers {
                logger.warning("fewer systemd sockets than workers: some workers serve no traffic for this listener",
                               metadata: ["listener": "\(listener.name)", "sockets": "\(passed.count)", "workers": "\(workers)"])
            }
            return out
        }
        var address = listener.address
        try lock("udp", address.port)
        for w in 0..<workers {
            let fd = try Sockets.udp(bind: address, options: options)
            if address.port == 0 {
                address = try Sockets.localAddress(fd.raw)
                try lock("udp", address.port)
            }
            out.append((w, fd))
        }
        return out
    }

    /// Listening TCP sockets for a stream listener: one SO_REUSEPORT socket per worker bound here,
    /// or the passed socket shared by every worker (`shared`: registered with EPOLLEXCLUSIVE).
    mutating func tcpSockets(_ listener: FerryConfig.Listener, workers: Int) throws -> (sockets: [FileDescriptor], shared: Bool) {
        let passed = take(listener.name)
        if let first = passed.first {
            try lock("tcp", (try? Sockets.localAddress(first).port) ?? 0)
            for extra in passed.dropFirst() {
                logger.warning("more than one stream socket passed for a listener; using the first",
                               metadata: ["listener": "\(listener.name)"])
                FileDescriptor(extra).close()
            }
            guard Sockets.type(first) == Int32(SOCK_STREAM.rawValue) else {
                throw SystemError(call: "systemd socket \"\(listener.name)\" is not a stream socket", errno: EINVAL)
            }
            try Sockets.makeNonBlocking(first)
            let fd = FileDescriptor(first)
            return (Array(repeating: fd, count: workers), true)
        }
        var address = listener.address
        try lock("tcp", address.port)
        var out: [FileDescriptor] = []
        for _ in 0..<workers {
            let fd = try Sockets.tcpListener(bind: address, backlog: 4096, reusePort: true)
            if address.port == 0 {
                address = try Sockets.localAddress(fd.raw)
                try lock("tcp", address.port)
            }
            out.append(fd)
        }
        return (out, false)
    }

    /// The admin TCP socket: passed as "admin", or bound here.
    mutating func adminSocket(_ address: SocketAddress?) throws(SystemError) -> FileDescriptor? {
        let passed = take("admin")
        if let first = passed.first {
            for extra in passed.dropFirst() { FileDescriptor(extra).close() }
            guard Sockets.type(first) == Int32(SOCK_STREAM.rawValue) else {
                throw SystemError(call: "systemd socket \"admin\" is not a stream socket", errno: EINVAL)
            }
            try Sockets.makeNonBlocking(first)
            return FileDescriptor(first)
        }
        guard let address else { return nil }
        return try Sockets.tcpListener(bind: address, backlog: 128)
    }
}
