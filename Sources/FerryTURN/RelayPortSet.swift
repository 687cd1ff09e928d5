import FerryCore
import Synchronization

/// The relayed ports held by this ferryd's live allocations, per address family: the only peers
/// on the relay's own addresses that a client may reach (PeerPolicy, docs/turn.md). Every
/// worker's TURN server writes it when an allocation gets or gives up a relayed socket and reads
/// it for ChannelBind, Send and ChannelData to one of those addresses, whichever worker owns the
/// port (two peers relayed by one ferryd usually sit on different workers).
///
/// One bit per port and family (16 KiB in all) in atomic words: a read is one relaxed load and
/// a mask, no lock and no read-modify-write, so it may sit on the relay path. Writes (an atomic
/// OR or AND) happen only on Allocate, on delete and at expiry. A port is marked after its
/// socket is bound and cleared before the socket closes, so a port this ferryd does not hold
/// (freed, or the kernel's to give to another process) is never reachable.
///
/// A value type over storage that the creator owns (`TURNShared`, or a test) and frees with
/// `deallocate()` once no server can read it.
public struct RelayPortSet: @unchecked Sendable {
    // @unchecked: the words are only touched through `Atomic`, from any thread.
    @usableFromInline let words: UnsafeMutablePointer<Atomic<UInt64>>
    private static let wordsPerFamily = 65_536 / 64

    public static func allocate() -> RelayPortSet {
        let words = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: 2 * wordsPerFamily)
        for i in 0..<(2 * wordsPerFamily) { (words + i).initialize(to: Atomic(0)) }
        return RelayPortSet(words: words)
    }

    public func deallocate() {
        words.deinitialize(count: 2 * RelayPortSet.wordsPerFamily)
        words.deallocate()
    }

    @inlinable static func index(_ family: IPFamily, _ port: UInt16) -> (word: Int, bit: UInt64) {
        let base = family == .ipv4 ? 0 : 65_536
        let n = base + Int(port)
        return (n >> 6, 1 << UInt64(n & 63))
    }

    public func insert(_ family: IPFamily, port: UInt16) {
        let (w, bit) = RelayPortSet.index(family, port)
        words[w].bitwiseOr(bit, ordering: .releasing)
    }

    public func remove(_ family: IPFamily, port: UInt16) {
        let (w, bit) = RelayPortSet.index(family, port)
        words[w].bitwiseAnd(~bit, ordering: .releasing)
    }

    /// Whether a live allocation of this ferryd holds `port` on its relay address of `family`.
    @inlinable public func contains(_ family: IPFamily, port: UInt16) -> Bool {
        let (w, bit) = RelayPortSet.index(family, port)
        return words[w].load(ordering: .relaxed) & bit != 0
    }

    /// The same for a peer address (its family from the address).
    @inlinable public func contains(_ peer: SocketAddress) -> Bool { contains(IPFamily(peer.ip), port: peer.port) }
}
