import Testing
import FerryCore
import FerrySystem
import CFerryLinux
#if canImport(Glibc)
import Glibc
#endif

@Suite struct SyscallWrapper {
    @Test func successReturnsValue() throws {
        let r = try syscall("getpid") { getpid() }
        #expect(r.value == getpid())
    }

    @Test func eagainIsWouldBlock() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        defer { close(fds[0]); close(fds[1]) }
        var byte: UInt8 = 0
        let r = try syscall("read") { read(fds[0], &byte, 1) }
        guard case .wouldBlock = r else {
            Issue.record("expected wouldBlock, got \(r)")
            return
        }
    }

    @Test func errorsNameTheCallAndErrno() {
        do {
            _ = try syscall("open(/nonexistent)") { open("/nonexistent/x", O_RDONLY) }
            Issue.record("expected an error")
        } catch {
            #expect(error.call == "open(/nonexistent)")
            #expect(error.errno == ENOENT)
            #expect(error.description.hasPrefix("open(/nonexistent): "))
            #expect(error.description.contains("errno \(ENOENT)"))
        }
    }

    @Test func eintrIsRetried() throws {
        var calls = 0
        let r = try syscall("fake") { () -> Int32 in
            calls += 1
            if calls < 3 {
                errno = EINTR
                return -1
            }
            return 7
        }
        #expect(r.value == 7)
        #expect(calls == 3)
    }

    @Test func syscallValueTurnsWouldBlockIntoError() {
        #expect(throws: SystemError(call: "fake", errno: EAGAIN)) {
            try syscallValue("fake") { () -> Int32 in
                errno = EAGAIN
                return -1
            }
        }
    }

    /// Tests run in parallel threads that open descriptors too, so a closed number may be
    /// reused at any moment: asking whether it is still valid (fcntl EBADF) failed about once
    /// in a few runs. The pipe tells that the first close happened; the second must leave
    /// alone whatever descriptor holds the number by then.
    @Test func fileDescriptorClosesOnce() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let fd = FileDescriptor(ends[1])
        #expect(fd.close() == nil)
        #expect(!fd.isOpen)
        var byte: UInt8 = 0
        #expect(read(ends[0], &byte, 1) == 0, "the write end is closed: the read end sees end of file")
        let other = try syscallValue("eventfd") { eventfd(0, 0) }  // often the same number as the closed end
        #expect(fd.close() == nil)
        #expect(fcntl(other, F_GETFD) != -1, "a second close closes nothing")
        _ = Glibc.close(other)
        _ = Glibc.close(ends[0])
    }

    @Test func aSocketWhoseBindFailsIsClosedNotDropped() throws {
        // An address this host does not have (EADDRNOTAVAIL), and a port already bound
        // (EADDRINUSE): the half-made socket is closed inside (a dropped open FileDescriptor
        // stops a debug build), and the errno reaches the caller.
        #expect(throws: SystemError(call: "bind(192.0.2.77:0)", errno: EADDRNOTAVAIL)) {
            try Sockets.udp(bind: SocketAddress("192.0.2.77:0")!)
        }
        let held = try Sockets.udp(bind: SocketAddress("127.0.0.1:0")!, options: .init(reusePort: false))
        defer { held.close() }
        let port = try Sockets.localAddress(held.raw).port
        #expect(throws: SystemError.self) {
            try Sockets.udp(bind: SocketAddress(ip: IPAddress("127.0.0.1")!, port: port), options: .init(reusePort: false))
        }
        #expect(throws: SystemError.self) { try Sockets.tcpListener(bind: SocketAddress("192.0.2.77:0")!) }
    }
}

@Suite struct Addresses {
    @Test func parseAndPrint() {
        #expect(SocketAddress("127.0.0.1:3478")?.description == "127.0.0.1:3478")
        #expect(SocketAddress("[::1]:443")?.description == "[::1]:443")
        #expect(SocketAddress("[2001:db8::1]:5")?.ip.isIPv4 == false)
        #expect(SocketAddress("1.2.3.4") == nil)
        #expect(SocketAddress("::1:5") == nil)
        #expect(SocketAddress("1.2.3.4:70000") == nil)
        #expect(SocketAddress("example.com:80") == nil)
        #expect(IPAddress("10.1.2.3")?.ipv4 == 0x0A01_0203)
    }

    @Test func kernelFormRoundTrips() {
        for text in ["192.0.2.1:1", "[2001:db8::42]:65535", "0.0.0.0:0"] {
            let a = SocketAddress(text)!
            var storage = sockaddr_storage()
            withUnsafeMutablePointer(to: &storage) { p in
                _ = a.write(to: UnsafeMutableRawPointer(p))
                #expect(SocketAddress(storage: UnsafeRawPointer(p)) == a)
            }
        }
    }

    @Test func ipv4WrittenForIPv6SocketIsMapped() {
        let a = SocketAddress("192.0.2.1:9")!
        var storage = sockaddr_storage()
        withUnsafeMutablePointer(to: &storage) { p in
            let len = a.write(to: UnsafeMutableRawPointer(p), asIPv6: true)
            #expect(Int(len) == MemoryLayout<sockaddr_in6>.size)
            let back = SocketAddress(storage: UnsafeRawPointer(p))!
            #expect(back.description == "[::ffff:192.0.2.1]:9")
        }
    }
}
