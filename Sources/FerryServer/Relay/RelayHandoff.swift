import Synchronization
import FerryCore
import FerrySystem

/// What crosses between the native relay's worker and the workers holding its stream ends
/// (docs/relay-protocol.md, "Stream side"): batches of records, one array per batch and loop
/// iteration, never an allocation per packet. A record is an 8-byte header (connection id,
/// length, kind) and the message's bytes.
///
/// Both directions are bounded by `relay.stream_handoff_bytes` of batches posted and not yet
/// taken: past it a packet is dropped and counted (`handoff_full`), so neither a flood from
/// streams nor a slow stream worker grows a mailbox without bound.
enum RelayHandoff {
    enum Kind: UInt8 {
        /// A control message (FERRY-BIND, STUN Binding, or the relay's answer).
        case control = 0
        /// A WireGuard message as it is.
        case wireGuard = 1
        /// Stream → relay only: the connection closed; its ends are unbound.
        case closed = 2
    }

    static let headerLength = 8

    static func append(_ batch: inout [UInt8], connection: ConnectionID, kind: Kind, _ bytes: UnsafeRawBufferPointer) {
        var header = (connection.raw, UInt16(truncatingIfNeeded: bytes.count), kind.rawValue, UInt8(0))
        withUnsafeBytes(of: &header) { batch.append(contentsOf: $0[0..<headerLength]) }
        batch.append(contentsOf: bytes)
    }

    /// Each record of `batch`, in order.
    static func forEach(_ batch: [UInt8], _ body: (ConnectionID, Kind, UnsafeRawBufferPointer) -> Void) {
        batch.withUnsafeBytes { b in
            var at = 0
            while at + headerLength <= b.count {
                let id = b.loadUnaligned(fromByteOffset: at, as: UInt32.self)
                let length = Int(b.loadUnaligned(fromByteOffset: at + 4, as: UInt16.self))
                let kind = Kind(rawValue: b[at + 6]) ?? .control
                guard at + headerLength + length <= b.count else { return }
                body(ConnectionID(id), kind, UnsafeRawBufferPointer(rebasing: b[(at + headerLength)..<(at + headerLength + length)]))
                at += headerLength + length
            }
        }
    }
}

/// The relay and its stream sides, as every worker reaches them; written at set-up, read-only
/// after, except the two budgets (atomics, touched once per batch).
final class RelayStreamHub: @unchecked Sendable {
    var sides: [RelayStreamSide] = []
    var relay: RelayService?
    let loops: [EventLoop]
    /// Bytes posted towards the relay's worker and not yet taken, and the other way.
    let toRelay = Atomic<Int>(0)
    let toStreams = Atomic<Int>(0)
    let budget: Int
    /// The relay's worker.
    let relayWorker: Int

    init(loops: [EventLoop], relayWorker: Int, budget: Int) {
        self.loops = loops
        self.relayWorker = relayWorker
        self.budget = budget
    }

    /// Whether `bytes` more fit next to `pending` (this iteration's batch) and what `counter`
    /// says is in flight: a relaxed load, no read-modify-write.
    func hasRoom(_ counter: borrowing Atomic<Int>, pending: Int, _ bytes: Int) -> Bool {
        counter.load(ordering: .relaxed) + pending + bytes <= budget
    }
}
