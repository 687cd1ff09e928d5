import Testing
import FerryCore
import FerrySignal
import FerryWire

/// The subjects and payloads instances exchange over NATS (docs/deployment.md).
@Suite struct ClusterSubjectsAndPayloads {
    let subjects = ClusterSubjects(prefix: "ferry.prod", instance: "eu-1")!
    let key = Base64.std([UInt8](repeating: 0xAB, count: 32))

    @Test func namesFromPeersBecomeHexTokens() throws {
        // A network with separators and wildcards cannot reach another network's subjects.
        let crafted = "a.>.* b"
        let subject = try #require(subjects.peer(key, network: crafted))
        let expected: String = "ferry.prod.n" + Crypto.hex(Array(crafted.utf8)) + ".p." + String(repeating: "ab", count: 32)
        #expect(subject == expected)
        let wild = subject.contains { (c: Character) -> Bool in c == "*" || c == ">" || c == " " }
        #expect(!wild)
        #expect(subject.split(separator: ".").count == 5)
        // Long names are hashed, and two names never share a token.
        let long = ClusterSubjects.networkToken(String(repeating: "n", count: 49))
        #expect(long.hasPrefix("h"))
        #expect(long.count == 65)
        #expect(ClusterSubjects.networkToken("ab") != ClusterSubjects.networkToken("a"))
        #expect(ClusterSubjects.networkToken("") == "n")
        // Not a key: no subject.
        #expect(subjects.peer("not-a-key", network: "x") == nil)
    }

    @Test func prefixAndInstanceMustBeTokens() {
        #expect(ClusterSubjects(prefix: "ferry.>", instance: "a") == nil)
        #expect(ClusterSubjects(prefix: "ferry", instance: "a.b") == nil)
        #expect(ClusterSubjects(prefix: "", instance: "a") == nil)
        #expect(ClusterSubjects(prefix: "a..b", instance: "a") == nil)
        #expect(ClusterSubjects(prefix: "ferry", instance: String(repeating: "x", count: 65)) == nil)
        #expect(ClusterSubjects(prefix: "ferry-1.eu_west", instance: "node-7") != nil)
    }

    @Test func everySubjectParsesBackToWhatItNames() throws {
        let net = ClusterSubjects.networkToken("net-a")
        #expect(subjects.parse(Substring(try #require(subjects.peer(key, network: "net-a")))) == .peer(networkToken: Substring(net), key: key))
        #expect(subjects.parse(Substring(try #require(subjects.presence(key, network: "net-a")))) == .presence(networkToken: Substring(net), key: key))
        #expect(subjects.parse(Substring(subjects.query(network: "net-a"))) == .query(networkToken: Substring(net)))
        #expect(subjects.parse(Substring(subjects.routeReply(worker: 3, sequence: 77))) == .routeReply(worker: 3, sequence: 77))
        #expect(subjects.parse(Substring(subjects.queryReply(worker: 1, connection: ConnectionID(9), network: "net-a")))
                == .queryReply(worker: 1, connection: ConnectionID(9), networkToken: Substring(net)))
        #expect(subjects.parse(Substring(subjects.resyncReply(network: "net-a"))) == .resyncReply(networkToken: Substring(net)))
        #expect(subjects.parse("ferry.prod.hb.us-2") == .heartbeat(instance: "us-2"))
    }

    @Test func subjectsOfOthersAndMalformedOnesAreNothing() {
        // Another instance's replies, another prefix, a bad key, a worker out of range.
        #expect(subjects.parse("ferry.prod.r.us-2.m.0.1") == nil)
        #expect(subjects.parse("ferry.prodx.hb.a") == nil)
        #expect(subjects.parse("ferry.hb.a") == nil)
        #expect(subjects.parse("ferry.prod.n00.p.abcd") == nil)
        #expect(subjects.parse("ferry.prod.r.eu-1.m.5000.1") == nil)
        #expect(subjects.parse("ferry.prod.r.eu-1.m.1.-1") == nil)
        #expect(subjects.parse("ferry.prod.r.eu-1.x.1.1") == nil)
        #expect(subjects.parse("ferry.prod") == nil)
    }

    @Test func payloadsRoundTripAndRefuseWhatIsNotOne() {
        let cases: [ClusterPayload] = [.claim(since: 1_700_000_000_000_000_000, instance: "eu-1"), .presence(online: true, instance: "a"),
                                       .presence(online: false, instance: "b"), .holds(instance: "c", keys: [key, key]), .gone]
        for c in cases {
            #expect(c.encoded().withUnsafeBytes { ClusterPayload.parse($0) } == c)
        }
        for bad in ["", "c 1", "c x eu", "c 1 a.b", "1", "1 a b", "h", "h a not-a-key", "g x", "z a", "{\"v\":1}"] {
            #expect(Array(bad.utf8).withUnsafeBytes { ClusterPayload.parse($0) } == nil, "\(bad)")
        }
        // A query keeps keys only, at most maxQueryKeys.
        let many = Array(repeating: key, count: ClusterPayload.maxQueryKeys + 10) + ["junk"]
        #expect(ClusterPayload.query(many).withUnsafeBytes { ClusterPayload.parseQuery($0) }.count == ClusterPayload.maxQueryKeys)
        #expect(Array("junk \(key) x.>".utf8).withUnsafeBytes { ClusterPayload.parseQuery($0) } == [key])
    }
}
