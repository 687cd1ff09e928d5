import Testing
import FerryClient

@Suite struct ServerURLParsing {
    @Test(arguments: [
        ("stun:relay.example.org", ServerURL.Kind.stun, ServerURL.Transport.udp, "relay.example.org", UInt16(3478), ""),
        ("turn:10.0.0.1:3479?transport=tcp", .turn, .tcp, "10.0.0.1", 3479, ""),
        ("turn:[2001:db8::1]?transport=udp", .turn, .udp, "2001:db8::1", 3478, ""),
        ("turns:relay.example.org:443?transport=tcp", .turn, .tls, "relay.example.org", 443, ""),
        ("turns:relay.example.org", .turn, .tls, "relay.example.org", 5349, ""),
        ("wss://relay.example.org/v1/signal", .signal, .tls, "relay.example.org", 443, "/v1/signal"),
        ("ws://127.0.0.1:3478/v1/signal", .signal, .tcp, "127.0.0.1", 3478, "/v1/signal"),
        ("wss://[::1]:5349", .signal, .tls, "::1", 5349, "/v1/signal"),
        ("wgrelay:relay.example.org", .native, .udp, "relay.example.org", 3479, ""),
        ("wgrelays:relay.example.org", .native, .tls, "relay.example.org", 443, ""),
        ("wgrelays:10.0.0.1:5349", .native, .tls, "10.0.0.1", 5349, ""),
    ])
    func parses(_ text: String, _ kind: ServerURL.Kind, _ transport: ServerURL.Transport, _ host: String, _ port: UInt16, _ path: String) {
        let u = ServerURL(text)
        #expect(u?.kind == kind && u?.transport == transport && u?.host == host && u?.port == port && u?.path == path, "\(text)")
    }

    @Test(arguments: ["http://x", "turn:", "turn:host:0", "turn:host:99999", "turns:host?transport=udp", "turn:host?transport=sctp", "turn:[::1", "wgrelays:host?transport=udp"])
    func refuses(_ text: String) {
        #expect(ServerURL(text) == nil, "\(text)")
    }
}

@Suite struct RelayOrdering {
    @Test func transportsFirstThenTheNearestHost() {
        let urls = ["turns:far.example:443?transport=tcp", "turn:far.example:3478?transport=udp", "turn:near.example:3478?transport=tcp",
                    "turn:near.example:3478?transport=udp", "turn:silent.example:3478?transport=udp"].map { ServerURL($0)! }
        let ordered = RelayOrder.order(urls, roundTrips: ["far.example": 80_000_000, "near.example": 9_000_000])
        #expect(ordered.map(\.text) == ["turn:near.example:3478?transport=udp", "turn:far.example:3478?transport=udp",
                                        "turn:silent.example:3478?transport=udp", "turn:near.example:3478?transport=tcp",
                                        "turns:far.example:443?transport=tcp"])
        // Nothing measured: the order given, by transport.
        #expect(RelayOrder.order(urls, roundTrips: [:]).map(\.host) == ["far.example", "near.example", "silent.example", "near.example", "far.example"])
    }
}
