import Testing
import FerryCore
import FerryWire
@testable import FerryClient

/// `ferry tunnel`'s choice of TURN server with a fake clock: ranking by measured round trip,
/// the transport order, deadlines and fallbacks.
@Suite struct RelaySelecting {
    static let ms: UInt64 = 1_000_000
    static func url(_ s: String) -> ServerURL { ServerURL(s)! }
    static let addresses = ["near.example": SocketAddress("198.51.100.1:3478")!, "far.example": SocketAddress("198.51.100.2:3478")!]
    static func resolve(_ u: ServerURL) -> SocketAddress? { addresses[u.host] }

    /// `r` given a success answer to measurement `tid`, from `from`: whether it counted.
    static func answer(_ r: inout RelaySelection, _ tid: TransactionID, from: SocketAddress, now: UInt64) -> Bool {
        let bytes = STUNWriter.build(method: STUN.Method.binding, class: .success, transactionID: tid) { w in
            w.append(STUN.Attribute.xorMappedAddress, xorAddress: SocketAddress("203.0.113.9:4000")!)
        }
        return bytes.withUnsafeBytes { b in
            guard case .success(let m) = STUNMessage.parse(b) else { return false }
            return r.answer(m, from: from, now: now)
        }
    }

    @Test func nearer_udp_hosts_are_tried_first_then_tcp_then_tls() {
        var r = RelaySelection()
        let urls = [RelaySelecting.url("turns:far.example:443?transport=tcp"), RelaySelecting.url("turn:far.example:3478?transport=udp"),
                    RelaySelecting.url("turn:near.example:3478?transport=tcp"), RelaySelecting.url("turn:near.example:3478?transport=udp")]
        let first = r.start(urls, now: 0, resolve: RelaySelecting.resolve)
        #expect(first.count == 2 && r.isRanking, "both UDP hosts measured, nothing attempted yet")
        guard case .measure(let farTid, let farAddress) = first[0], case .measure(let nearTid, let nearAddress) = first[1] else {
            Issue.record("\(first)")
            return
        }
        #expect(farAddress == RelaySelecting.addresses["far.example"] && nearAddress == RelaySelecting.addresses["near.example"])
        // A spoofed answer (from elsewhere) does not count; the real ones do.
        let spoofed = RelaySelecting.answer(&r, nearTid, from: SocketAddress("192.0.2.66:3478")!, now: 5 * RelaySelecting.ms)
        let near = RelaySelecting.answer(&r, nearTid, from: nearAddress, now: 10 * RelaySelecting.ms)
        let far = RelaySelecting.answer(&r, farTid, from: farAddress, now: 90 * RelaySelecting.ms)
        let again = RelaySelecting.answer(&r, farTid, from: farAddress, now: 91 * RelaySelecting.ms)
        #expect(!spoofed && near && far)
        #expect(!again, "an answer counts once")
        let step1 = r.tick(now: 299 * RelaySelecting.ms)
        #expect(step1.isEmpty)
        let step2 = r.tick(now: 300 * RelaySelecting.ms)
        #expect(step2 == [.attempt(urls[3])], "near UDP first")
        #expect(!r.isRanking && r.roundTrips == ["near.example": 10 * RelaySelecting.ms, "far.example": 90 * RelaySelecting.ms])
        // UDP allocations get 3 s; then the next.
        let step3 = r.tick(now: 3_300 * RelaySelecting.ms)
        #expect(step3.isEmpty)
        let step4 = r.tick(now: 3_301 * RelaySelecting.ms)
        #expect(step4 == [.attempt(urls[1])])
        let step5 = r.failed(now: 3_400 * RelaySelecting.ms)
        #expect(step5 == .attempt(urls[2]), "then TCP")
        // A stream has no deadline while it connects; once connected its allocation gets 3 s.
        let step6 = r.tick(now: 60_000 * RelaySelecting.ms)
        #expect(step6.isEmpty)
        r.connected(now: 60_000 * RelaySelecting.ms)
        let step7 = r.tick(now: 63_001 * RelaySelecting.ms)
        #expect(step7 == [.attempt(urls[0])], "then TLS")
        r.connected(now: 63_100 * RelaySelecting.ms)
        r.allocated()
        let step8 = r.tick(now: 1_000_000 * RelaySelecting.ms)
        #expect(step8.isEmpty, "an allocation that succeeded has no deadline")
        #expect(r.current == urls[0])
        let step9 = r.failed(now: 1_000_001 * RelaySelecting.ms)
        #expect(step9 == .exhausted)
    }

    @Test func one_host_is_not_ranked_and_unresolvable_ones_are_not_measured() {
        var r = RelaySelection()
        let urls = [RelaySelecting.url("turn:near.example:3478?transport=tcp"), RelaySelecting.url("turn:near.example:3478?transport=udp"),
                    RelaySelecting.url("turn:nowhere.example:3478?transport=udp")]
        let actions = r.start(urls, now: 0, resolve: RelaySelecting.resolve)
        #expect(actions.count == 2 && !r.isRanking)
        #expect(actions.last == .attempt(urls[1]), "UDP before TCP, at once")
        // Starting over forgets the old attempt and its deadline.
        _ = r.start([], now: 10, resolve: RelaySelecting.resolve)
        #expect(r.current == nil && r.tick(now: 10_000_000_000).isEmpty)
    }
}
