#if canImport(Glibc)
import Glibc
#endif
import CSystemd

/// systemd integration: socket activation and the notify protocol. Without systemd (no
/// LISTEN_FDS, no NOTIFY_SOCKET) every call here is a no-op, so ferryd runs the same by hand.
public enum Systemd {
    /// A socket systemd passed in, with its `FileDescriptorName=`.
    public struct PassedSocket: Sendable {
        public let name: String
        public let fd: Int32
    }

    /// The passed sockets, in order; clears LISTEN_FDS so children do not see them.
    public static func takeListenedSockets() -> [PassedSocket] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = nil
        let n = sd_listen_fds_with_names(1, &names)
        guard n > 0 else { return [] }
        var result: [PassedSocket] = []
        for i in 0..<Int(n) {
            let name = names?[i].map { String(cString: $0) } ?? "unknown"
            result.append(PassedSocket(name: name, fd: ferry_sd_listen_fds_start + Int32(i)))
        }
        if let names {
            for i in 0..<Int(n) { free(names[i]) }
            free(names)
        }
        return result
    }

    /// Sends a notify state (`READY=1`, `STATUS=…`, `STOPPING=1`, `WATCHDOG=1`, `RELOADING=1`
    /// with `MONOTONIC_USEC=`). Returns false when there is no notify socket.
    @discardableResult
    public static func notify(_ state: String) -> Bool {
        sd_notify(0, state) > 0
    }

    /// The watchdog interval systemd asks for, in microseconds, or nil when disabled.
    public static func watchdogMicros() -> UInt64? {
        var usec: UInt64 = 0
        return sd_watchdog_enabled(0, &usec) > 0 ? usec : nil
    }

    /// `MONOTONIC_USEC=` for `RELOADING=1` (systemd 253's notify-reload protocol).
    public static func monotonicMicros() -> UInt64 { monotonicNanos() / 1000 }
}
