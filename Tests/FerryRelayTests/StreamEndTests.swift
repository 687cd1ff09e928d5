import Testing
import FerryCore
import FerryWire
@testable import FerryRelay

/// The stream side's pure parts: stream ends' synthetic addresses, their challenge, and a closed
/// stream unbinding every end it held.
@Suite struct StreamEnds {
    @Test func synthetic_addresses_round_trip_and_no_real_address_decodes() {
        let a = RelayStreamEnd.address(worker: 3, connection: ConnectionID(0xDEAD_BEEF))
        #expect(a.port == 0 && !a.ip.isIPv4)
        let d = RelayStreamEnd.decode(a)
        #expect(d?.worker == 3 && d?.connection == ConnectionID(0xDEAD_BEEF))
        #expect(RelayStreamEnd.address(worker: 0, connection: ConnectionID(1)) != RelayStreamEnd.address(worker: 1, connection: ConnectionID(1)))
        for real in ["203.0.113.9:0", "203.0.113.9:51820", "[100::1]:51820", "[::ffff:1.2.3.4]:0"] {
            #expect(RelayStreamEnd.decode(SocketAddress(real)!) == nil, "\(real) is not a stream end")
        }
    }

    /// Binds cross networks in the clear: one captured with its cookie and replayed over the
    /// replayer's own stream gets a challenge for that stream, and the end stays where it was.
    @Test func a_bind_captured_from_udp_and_replayed_over_a_stream_moves_nothing() {
        let relay = Control.Relay()
        let a = TestPeer("198.51.100.1:51820"), b = TestPeer("198.51.100.2:51820")
        let credential = relay.credential(a)
        let (challenge, first) = relay.send(relay.bindRequest(credential: credential, partner: b.key), from: a.address)
        #expect(first == .challenged)
        let captured = relay.bindRequest(credential: credential, partner: b.key, cookie: Control.STUNFields(challenge)?.cookie)
        #expect(relay.send(captured, from: a.address).1 == .waiting)
        let replayer = RelayStreamEnd.address(worker: 1, connection: ConnectionID(7))
        #expect(relay.send(captured, from: replayer).1 == .wrongSource)
        #expect(relay.sessions.boundAddresses == [a.address])
        // The stream end binds for itself once it answers its own challenge (it holds the key).
        #expect(relay.bind(a, to: b, from: replayer).0 == .waiting)
        #expect(relay.sessions.boundAddresses == [replayer])
    }

    @Test func closing_a_stream_unbinds_every_end_bound_over_it() {
        var s = RelaySessions(limits: RelaySessions.Limits())
        let end = RelayStreamEnd.address(worker: 0, connection: ConnectionID(9))
        let me = TestPeer("198.51.100.1:1"), p1 = TestPeer("198.51.100.2:2"), p2 = TestPeer("198.51.100.3:3")
        #expect(s.bind(network: "n", key: me.wg, partner: p1.wg, address: end, now: 10) == .waiting)
        #expect(s.bind(network: "n", key: me.wg, partner: p2.wg, address: end, now: 10) == .waiting)
        #expect(s.bind(network: "n", key: p1.wg, partner: me.wg, address: p1.address, now: 10) == .active)
        #expect(s.activeCount == 1 && s.sessionCount == 2)
        #expect(s.unbindAll(at: end) == 2)
        #expect(s.activeCount == 0 && s.sessionCount == 1, "p1's end stays bound, waiting")
        #expect(!s.boundAddresses.contains(end))
        #expect(s.unbindAll(at: end) == 0)
    }

    /// Found by fuzzing: one stream (or one UDP port) holding both keys of a session bound both
    /// ends there, and the relay sent its packets back to it.
    @Test func both_ends_of_a_session_cannot_be_bound_at_one_address() {
        var s = RelaySessions(limits: RelaySessions.Limits())
        let end = RelayStreamEnd.address(worker: 0, connection: ConnectionID(3))
        let a = TestPeer("198.51.100.1:1"), b = TestPeer("198.51.100.2:2")
        #expect(s.bind(network: "n", key: a.wg, partner: b.wg, address: end, now: 10) == .waiting)
        #expect(s.bind(network: "n", key: b.wg, partner: a.wg, address: end, now: 10) == .refused(.samePeer))
        #expect(s.bind(network: "n", key: b.wg, partner: a.wg, address: b.address, now: 10) == .active)
        // Nor can an end move onto its partner's address.
        #expect(s.bind(network: "n", key: b.wg, partner: a.wg, address: end, now: 11) == .refused(.samePeer))
        var initiation = WG.initiation(sender: 1, to: b.key)
        let route = initiation.withUnsafeMutableBytes { s.route($0.baseAddress!, length: $0.count, kind: .initiation, from: end, now: 12_000_000_000) }
        #expect(route == .forward(b.address))
    }
}
