#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CFerryLinux

/// A failed system call: which call, and the errno it returned.
public struct SystemError: Error, Equatable, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32

    public init(call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String {
        "\(call): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

// The libc calls that take a descriptor, bound once to names of their own (as swift-nio's
// System.swift does). Code outside this module goes through the wrappers here, in `Sockets`,
// `Files` and `EventLoop`; Tests/integration/test_source_rules.py refuses a direct call anywhere
// but this file.
@usableFromInline func sysClose(_ fd: Int32) -> Int32 { Glibc.close(fd) }
@usableFromInline func sysRead(_ fd: Int32, _ buf: UnsafeMutableRawPointer?, _ n: Int) -> Int { Glibc.read(fd, buf, n) }
@usableFromInline func sysWrite(_ fd: Int32, _ buf: UnsafeRawPointer?, _ n: Int) -> Int { Glibc.write(fd, buf, n) }
@usableFromInline func sysSend(_ fd: Int32, _ buf: UnsafeRawPointer?, _ n: Int, _ flags: Int32) -> Int { Glibc.send(fd, buf, n, flags) }
@usableFromInline func sysShutdown(_ fd: Int32, _ how: Int32) -> Int32 { Glibc.shutdown(fd, how) }
@usableFromInline func sysEpollCtl(_ epfd: Int32, _ op: Int32, _ fd: Int32, _ ev: UnsafeMutablePointer<epoll_event>?) -> Int32 {
    epoll_ctl(epfd, op, fd, ev)
}
@usableFromInline func sysEpollWait(_ epfd: Int32, _ events: UnsafeMutablePointer<epoll_event>?, _ max: Int32, _ timeout: Int32) -> Int32 {
    epoll_wait(epfd, events, max, timeout)
}

/// Writes all of `bytes` to a blocking descriptor (stderr for the log), retrying short writes
/// and EINTR; false when the descriptor refuses. Not for sockets on the loop.
@discardableResult
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var done = 0
    while done < bytes.count {
        let n = sysWrite(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}

/// The outcome of a non-blocking call: done with a value, or the kernel would have blocked.
public enum IOResult<Value> {
    case done(Value)
    case wouldBlock

    /// The value, or nil when the call would have blocked.
    @inlinable public var value: Value? {
        if case .done(let v) = self { return v }
        return nil
    }
}

/// The one way Ferry makes a system call (after swift-nio's `System.swift`): retries `EINTR`,
/// reports `EAGAIN` as `.wouldBlock`, and throws a typed error naming the call otherwise.
/// Errnos that can only mean a bug in Ferry (`EBADF`, `EFAULT`) stop the process at once:
/// continuing would act on the wrong descriptor or on freed memory.
@inlinable
public func syscall<T: FixedWidthInteger>(
    _ name: StaticString, _ body: () -> T
) throws(SystemError) -> IOResult<T> {
    while true {
        let result = body()
        if result >= 0 { return .done(result) }
        let err = Glibc.errno
        switch err {
        case EINTR:
            continue
        case EAGAIN, EWOULDBLOCK:
            return .wouldBlock
        case EBADF, EFAULT:
            preconditionFailure("\(name) failed with an errno that means a bug: \(err)")
        default:
            throw SystemError(call: "\(name)", errno: err)
        }
    }
}

/// A call that must not block (setup calls, `close`): `.wouldBlock` is an error here.
@inlinable
@discardableResult
public func syscallValue<T: FixedWidthInteger>(
    _ name: StaticString, _ body: () -> T
) throws(SystemError) -> T {
    switch try syscall(name, body) {
    case .done(let v): return v
    case .wouldBlock: throw SystemError(call: "\(name)", errno: EAGAIN)
    }
}

/// Monotonic time in nanoseconds. The loop reads it once per iteration and hands it down;
/// protocol logic never reads a clock itself.
@inlinable
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Wall-clock seconds since the epoch (for credentials with an expiry, and logs).
@inlinable
public func wallClockSeconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec)
}

/// Wall-clock milliseconds since the epoch (timestamps of sealed signaling payloads).
@inlinable
public func wallClockMilliseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) &* 1000 &+ UInt64(ts.tv_nsec) / 1_000_000
}

/// Raises the soft limit on open files to the hard limit (every allocation holds a relayed
/// socket; the default soft limit of 1024 would cap a relay at a few hundred sessions).
/// Returns the new soft limit.
@discardableResult
public func raiseOpenFileLimit() -> UInt64 {
    var lim = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 else { return 0 }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
    }
    return UInt64(lim.rlim_cur)
}
