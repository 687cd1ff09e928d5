import Testing
import FerryConfig

@Suite struct TunnelFileParsing {
    @Test func readsEverySetting() throws {
        let f = try TunnelFile.parse("""
            interface = "wg0"
            signal = "wss://relay.example.org/v1/signal"
            token_file = "/etc/ferry/tunnel.token"
            ca = "/etc/ferry/ca.pem"
            port = 51900
            relay_only = true
            status_file = "/run/ferry/t.json"
            """)
        #expect(f.interface == "wg0" && f.signals == ["wss://relay.example.org/v1/signal"] && f.tokenFile == "/etc/ferry/tunnel.token")
        #expect(f.ca == "/etc/ferry/ca.pem" && f.port == 51900 && f.relayOnly && f.statusFile == "/run/ferry/t.json")
        let peers = try TunnelFile.parse("""
            signal = "ws://127.0.0.1:3478/v1/signal"
            token = "ferry1.x"
            private_key_file = "/k"
            [[peer]]
            key = "AAAA"
            deliver_to = "127.0.0.1:9"
            """)
        #expect(peers.peers == [TunnelFile.Peer(key: "AAAA", deliverTo: "127.0.0.1:9")])
    }

    @Test func namesEveryProblemByKey() {
        do {
            _ = try TunnelFile.parse("""
                port = 70000
                relay_only = "yes"
                colour = "blue"
                [[peer]]
                key = "AAAA"
                """)
            Issue.record("parsed")
        } catch {
            let keys = Set(error.issues.map(\.key))
            #expect(keys.isSuperset(of: ["port", "relay_only", "colour", "peer[0].deliver_to", "signal", "token"]), "\(error.issues)")
        }
        #expect(throws: ConfigErrors.self) { try TunnelFile.parse("interface = ") }
    }
}
