#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerryTURN
import Logging

/// The session log: one line when a TURN allocation or a signaling session ends (who, from
/// where, when it started, how long, bytes and packets each way, why it ended), logged as
/// `ferryd.session` at info level so an operator answers abuse reports and bills from it
/// (`log.sessions = false` turns it off). With `log.format = "json"` each line is one object
/// whose counts are JSON numbers. Fields: docs/operations.md "Session log".
///
/// Written on the worker that owned the session, when it ends (never per packet). Static after
/// set-up; the logger is thread-safe (one write per line).
struct SessionLog: Sendable {
    let logger: Logger
    let enabled: Bool

    init(enabled: Bool) {
        logger = Logger(label: "ferryd.session")
        self.enabled = enabled
    }

    /// A TURN allocation ended. `transport`: udp, tcp or tls.
    func allocationEnded(_ r: AllocationRecord, _ reason: AllocationRecord.End, transport: String) {
        guard enabled else { return }
        logger.info("allocation ended", metadata: [
            "kind": "turn",
            "user": "\(r.user)",
            "username": "\(r.username)",
            "client": "\(r.client)",
            "transport": "\(transport)",
            "relayed": "\(r.relayed.map { "\($0)" }.joined(separator: ","))",
            "started": "\(SessionLog.iso(r.created))",
            "duration_seconds": .stringConvertible(r.ageSeconds),
            "packets_from_client": .stringConvertible(r.packetsToPeer),
            "bytes_from_client": .stringConvertible(r.bytesToPeer),
            "packets_to_client": .stringConvertible(r.packetsToClient),
            "bytes_to_client": .stringConvertible(r.bytesToClient),
            "reason": "\(reason.rawValue)",
        ])
    }

    /// What a signaling session did, for its line.
    struct Signaling {
        var peer: String
        var network: String
        var client: SocketAddress
        var transport: String
        var started: UInt64
        var durationSeconds: UInt64
        var messagesIn: UInt64
        var bytesIn: UInt64
        var messagesOut: UInt64
        var bytesOut: UInt64
        var reason: String
    }

    func signalingEnded(_ s: Signaling) {
        guard enabled else { return }
        logger.info("signaling session ended", metadata: [
            "kind": "signal",
            "peer": "\(s.peer)",
            "network": "\(s.network)",
            "client": "\(s.client)",
            "transport": "\(s.transport)",
            "started": "\(SessionLog.iso(s.started))",
            "duration_seconds": .stringConvertible(s.durationSeconds),
            "messages_from_client": .stringConvertible(s.messagesIn),
            "bytes_from_client": .stringConvertible(s.bytesIn),
            "messages_to_client": .stringConvertible(s.messagesOut),
            "bytes_to_client": .stringConvertible(s.bytesOut),
            "reason": "\(s.reason)",
        ])
    }

    /// Unix seconds as `2026-11-27T14:05:09Z`.
    static func iso(_ seconds: UInt64) -> String { FerryLogHandler.iso(time_t(seconds)) }
}
