#if canImport(Glibc)
import Glibc
#endif
import CFerryLinux

/// Delivers SIGTERM, SIGINT and SIGHUP through a signalfd on a loop instead of async handlers.
/// `blockProcessSignals()` must run before any thread starts so every thread inherits the mask.
public final class SignalSource: EventHandler {
    public static let handled: [Int32] = [SIGTERM, SIGINT, SIGHUP]
    private let fd: FileDescriptor
    private let onSignal: (Int32) -> Void

    public static func blockProcessSignals() {
        _ = handled.withUnsafeBufferPointer { ferry_block_signals($0.baseAddress, Int32($0.count)) }
        signal(SIGPIPE, SIG_IGN)
    }

    public init(loop: EventLoop, onSignal: @escaping (Int32) -> Void) throws(SystemError) {
        fd = FileDescriptor(try syscallValue("signalfd") {
            SignalSource.handled.withUnsafeBufferPointer { ferry_signalfd($0.baseAddress, Int32($0.count)) }
        })
        self.onSignal = onSignal
        try loop.register(fd: fd.raw, events: Epoll.input, handler: self)
    }

    public func handleEvent(_ events: UInt32, loop: EventLoop) {
        var info = signalfd_siginfo()
        while sysRead(fd.raw, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size {
            onSignal(Int32(info.ssi_signo))
        }
    }
}
