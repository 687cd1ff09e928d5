#if canImport(Glibc)
import Glibc
#endif

/// Owns one file descriptor and closes it exactly once: explicitly with `close()`, or when the
/// last reference goes away. `release()` hands the raw number to a new owner without closing.
/// A class rather than a non-copyable struct so owners can keep descriptors in arrays and
/// dictionaries; the packet path reads `raw` once per batch, never per packet.
public final class FileDescriptor: @unchecked Sendable {
    public let raw: Int32
    /// Owned by whoever owns this object (one thread at a time).
    private var open = true

    public init(_ raw: Int32) {
        precondition(raw >= 0, "FileDescriptor from a negative number")
        self.raw = raw
    }

    public var isOpen: Bool { open }

    /// Closes now; an error from close(2) is returned, not thrown (the fd is gone either way).
    @discardableResult
    public func close() -> SystemError? {
        guard open else { return nil }
        open = false
        if sysClose(raw) != 0 && errno != EINTR {
            return SystemError(call: "close", errno: errno)
        }
        return nil
    }

    /// Gives up ownership without closing.
    public func release() -> Int32 {
        open = false
        return raw
    }

    /// An owner must close (or release) what it owns: dropping an open descriptor is a leak
    /// caught here in debug builds and the tests (swift-nio's `BaseSocket` does the same). A
    /// release build still closes it, so a missed path cannot exhaust the process's descriptors.
    deinit {
        assert(!open, "FileDescriptor \(raw) dropped while open: close() or release() it")
        if open { _ = sysClose(raw) }
    }
}
