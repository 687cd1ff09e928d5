import Testing
import FerryCore
import FerrySignal
@testable import FerryClient

/// The body of `ferry tunnel`'s sealed offers and answers.
@Suite struct SessionDescriptions {
    static let host = ICECandidate(kind: .host, address: SocketAddress("10.1.0.2:51820")!)
    static let relay = ICECandidate(kind: .relay, address: SocketAddress("198.51.100.1:50000")!, base: ICECandidate.undisclosed)

    @Test func an_answer_round_trips_through_json_text() {
        let d = SessionDescription(ufrag: "uf", password: "pw", candidates: [SessionDescriptions.host, SessionDescriptions.relay],
                                   answering: "theirs", wireGuardPort: 51820, native: "wgrelay:198.51.100.1:3479")
        let text = d.json.encoded()
        let back = JSONValue.parse(text).flatMap(SessionDescription.init)
        #expect(back == d)
    }

    @Test func an_offer_has_no_optional_fields_it_was_not_given() {
        let d = SessionDescription(ufrag: "uf", password: "pw", candidates: [])
        #expect(d.json["offer"] == nil && d.json["wg_port"] == nil && d.json["native"] == nil)
    }

    @Test(arguments: [
        (#"{"pwd":"p","candidates":[]}"#, false),
        (#"{"ufrag":"u","candidates":[]}"#, false),
        (#"{"ufrag":1,"pwd":"p"}"#, false),
        (#"{"ufrag":"u","pwd":"p"}"#, true),
    ])
    func ice_credentials_are_required(_ text: String, _ accepted: Bool) {
        #expect((JSONValue.parse(Array(text.utf8)).flatMap(SessionDescription.init) != nil) == accepted, "\(text)")
    }

    @Test(arguments: [0.0, -1, 65536, 1e300, 51820.5])
    func a_wireguard_port_out_of_range_is_left_out(_ port: Double) {
        let body = JSONValue.object([("ufrag", .string("u")), ("pwd", .string("p")), ("wg_port", .number(port))])
        #expect(SessionDescription(body)?.wireGuardPort == nil)
    }

    @Test func candidates_that_do_not_parse_are_left_out() {
        let body = JSONValue.object([("ufrag", .string("u")), ("pwd", .string("p")),
                                     ("candidates", .array([.string("garbage"), .number(3), .string(SessionDescriptions.host.sdp)]))])
        #expect(SessionDescription(body)?.candidates == [SessionDescriptions.host])
    }
}
