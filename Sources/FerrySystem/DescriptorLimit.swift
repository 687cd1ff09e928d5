#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// When the process last ran out of file descriptors (EMFILE, ENFILE) on a descriptor it made on
/// demand: an accepted connection, a relayed socket. Written by whichever worker met it, read by
/// readiness (`/readyz`) and the status page. Process-wide, like the limit itself.
public enum DescriptorLimit {
    private static let lastHit = Atomic<UInt64>(0)
    /// How long after the last hit ferryd still reports itself at the limit.
    public static let reportFor: UInt64 = 5_000_000_000

    /// The process met its descriptor limit at `now` (monotonic nanoseconds).
    public static func hit(now: UInt64) { lastHit.store(max(now, 1), ordering: .relaxed) }

    /// Whether the limit was met within `reportFor` of `now`.
    public static func recentlyHit(now: UInt64) -> Bool {
        let t = lastHit.load(ordering: .relaxed)
        return t != 0 && now &- t < reportFor
    }

    /// Nanoseconds since the last hit, or nil if there was none.
    public static func sinceLastHit(now: UInt64) -> UInt64? {
        let t = lastHit.load(ordering: .relaxed)
        return t == 0 ? nil : now &- t
    }

    /// Whether `errno` means the process or the system is out of descriptors.
    public static func isExhaustion(_ e: Int32) -> Bool { e == EMFILE || e == ENFILE }

    /// The soft limit on open descriptors.
    public static func limit() -> UInt64 {
        var lim = rlimit()
        return getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 ? UInt64(lim.rlim_cur) : 0
    }

    /// Descriptors open now (/proc/self/fd), -1 when it cannot be read (at the limit, opening
    /// the directory itself may fail).
    public static func openCount() -> Int {
        guard let dir = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(dir) }
        var n = 0
        while readdir(dir) != nil { n += 1 }
        return max(0, n - 3)   // ".", ".." and the directory's own descriptor
    }
}
