/// Which service a datagram on a shared UDP socket belongs to, decided by its first byte in the
/// manner of RFC 7983 (§7): STUN 0–3, TURN ChannelData 64–79 (64–127 with RFC 5766's channel
/// range), and 192–255, which no RFC 7983 protocol uses, left for Ferry's native relay. Services
/// claim ranges when they register; a socket may name one service as its fallback for bytes no
/// one claimed (TURN: anything that is neither STUN nor ChannelData is a malformed TURN message,
/// counted as such), otherwise those datagrams are dropped and counted as `unclaimed`.
///
/// A 256-entry table, built at set-up and read-only after: one load per datagram.
struct DatagramDemux {
    /// A service's index on its socket, plus one; 0 means nobody.
    typealias Route = UInt8
    static let unclaimed: Route = 0

    /// The first-byte ranges of the protocols Ferry serves or keeps room for.
    enum Range {
        static let stun: ClosedRange<UInt8> = 0...3
        /// RFC 8656 §12: channels 0x4000–0x4FFF; RFC 5766 allowed up to 0x7FFF (`turn.strict_channel_numbers`).
        static let channelData: ClosedRange<UInt8> = 64...127
        /// Free in RFC 7983's table: the native relay's framing will start here.
        static let nativeRelay: ClosedRange<UInt8> = 192...255
    }

    struct Overlap: Error, CustomStringConvertible {
        let byte: UInt8
        var description: String { "two datagram services claim first byte \(byte)" }
    }

    private(set) var table = [Route](repeating: DatagramDemux.unclaimed, count: 256)
    private var claimed = [Bool](repeating: false, count: 256)

    init() {}

    /// `route` gets every first byte in `range`; a byte claimed twice is a set-up error.
    mutating func claim(_ range: ClosedRange<UInt8>, route: Route) throws(Overlap) {
        for b in range {
            guard !claimed[Int(b)] else { throw Overlap(byte: b) }
            claimed[Int(b)] = true
            table[Int(b)] = route
        }
    }

    /// Bytes nobody claimed go to `route`.
    mutating func fallback(_ route: Route) {
        for b in 0..<256 where !claimed[b] { table[b] = route }
    }

    @inline(__always)
    func route(_ firstByte: UInt8) -> Route { table[Int(firstByte)] }
}
