#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem
import FerryTURN
import Logging

/// Opens one worker's relayed sockets from its block of `turn.port_min…port_max` (the range is
/// cut into one contiguous block per worker, so workers never race for a port; the kernel's bind
/// is the final word: a port some other process holds is skipped), and says why when it cannot:
/// every failure is counted by reason (`ferry_turn_allocations_failed_total`) and logged at most
/// once per reason every `logInterval`, so a 508 always has a visible cause.
///
/// Ownership: the worker's loop thread.
struct RelayPorts {
    let range: ClosedRange<Int>
    let options: Sockets.UDPOptions
    private var cursor: Int
    private var lastLogged: [UInt64] = Array(repeating: 0, count: TURNCounters.RelayFailure.allCases.count)
    private let logger = Logger(label: "ferryd.turn")
    static let logInterval: UInt64 = 10_000_000_000
    /// Ports tried per Allocate at most (a full block is not scanned on every request).
    static let triesPerAllocate = 256

    init(range: ClosedRange<Int>, options: Sockets.UDPOptions) {
        self.range = range
        self.options = options
        cursor = Int.random(in: range)
    }

    enum Outcome {
        case opened(FileDescriptor, port: UInt16)
        case failed(TURNCounters.RelayFailure, errno: Int32)
    }

    /// A socket bound to `ip` on the next free port of the block (an even one if asked).
    mutating func open(ip: IPAddress, evenPort: Bool) -> Outcome {
        for _ in 0..<min(range.count, RelayPorts.triesPerAllocate) {
            cursor = cursor >= range.upperBound ? range.lowerBound : cursor + 1
            if evenPort && cursor % 2 == 1 { continue }
            switch open(ip: ip, port: UInt16(cursor)) {
            case .opened(let fd, let port): return .opened(fd, port: port)
            case .failed(.portsExhausted, _): continue   // that port is taken: try the next
            case .failed(let reason, let e): return .failed(reason, errno: e)
            }
        }
        return .failed(.portsExhausted, errno: EADDRINUSE)
    }

    /// A socket bound to exactly `ip`:`port` (EVEN-PORT's reserved neighbour).
    func open(ip: IPAddress, port: UInt16) -> Outcome {
        do {
            return .opened(try Sockets.udp(bind: SocketAddress(ip: ip, port: port), options: options), port: port)
        } catch {
            return .failed(RelayPorts.reason(error.errno), errno: error.errno)
        }
    }

    static func reason(_ e: Int32) -> TURNCounters.RelayFailure {
        switch e {
        case EADDRINUSE, EACCES: .portsExhausted
        case EADDRNOTAVAIL: .addressUnavailable
        case EMFILE, ENFILE: .descriptorLimit
        case ENOMEM, ENOBUFS: .noMemory
        default: .other
        }
    }

    /// Counts a failure and logs it unless this reason was logged within `logInterval`.
    mutating func report(_ reason: TURNCounters.RelayFailure, errno e: Int32, ip: IPAddress, server: TURNServer, now: UInt64) {
        server.countRelayFailure(reason)
        if reason == .descriptorLimit { DescriptorLimit.hit(now: now) }
        guard now &- lastLogged[reason.rawValue] >= RelayPorts.logInterval || lastLogged[reason.rawValue] == 0 else { return }
        lastLogged[reason.rawValue] = now
        logger.error("cannot open a relayed socket: allocations get 508", metadata: [
            "reason": "\(reason.label)", "error": "\(String(cString: strerror(e)))", "relay_address": "\(ip)",
            "ports": "\(range.lowerBound)-\(range.upperBound)", "open_files": "\(DescriptorLimit.openCount())", "open_files_limit": "\(DescriptorLimit.limit())",
            "hint": "\(hint(reason))",
        ])
    }

    private func hint(_ reason: TURNCounters.RelayFailure) -> String {
        switch reason {
        case .portsExhausted: "every port of this worker's block is taken: widen turn.port_min/port_max, or move net.ipv4.ip_local_port_range off it"
        case .addressUnavailable: "the relay address is not on this host any more: check turn.relay_ipv4/6 and the interface"
        case .descriptorLimit: "raise LimitNOFILE (each allocation holds a socket)"
        case .noMemory: "the kernel is short of memory"
        case .other: "see the error"
        }
    }
}
