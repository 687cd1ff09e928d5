#if canImport(Glibc)
import Glibc
#endif
import CFerryLinux

/// A timerfd firing every `interval` on a loop: for the rare caller that needs a pace finer than
/// the loop's 10 ms timer wheel (`ferry bench`'s signaling generator sends every millisecond).
public final class IntervalTimer: EventHandler {
    let fd: FileDescriptor
    private var registration: Registration?
    private var body: () -> Void

    public init(loop: EventLoop, intervalNanos: Int, _ body: @escaping () -> Void) throws(SystemError) {
        fd = FileDescriptor(try syscallValue("timerfd_create") { timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC)) })
        self.body = body
        let t = timespec(tv_sec: intervalNanos / 1_000_000_000, tv_nsec: intervalNanos % 1_000_000_000)
        var spec = itimerspec(it_interval: t, it_value: t)
        try syscallValue("timerfd_settime") { timerfd_settime(fd.raw, 0, &spec, nil) }
        registration = try loop.register(fd: fd.raw, events: Epoll.input, handler: self)
    }

    public func handleEvent(_ events: UInt32, loop: EventLoop) {
        var expirations: UInt64 = 0
        _ = sysRead(fd.raw, &expirations, 8)
        body()
    }

    /// Stops it for good (loop thread).
    public func cancel(on loop: EventLoop) {
        guard let r = registration else { return }
        loop.deregister(fd: fd.raw, r)
        registration = nil
        body = {}
        _ = fd.close()
    }
}
