import FerrySignal

/// What `ferry tunnel` puts in a sealed offer or answer (docs/cli.md): ICE's credentials and
/// candidates, the offer an answer answers, WireGuard's listen port (for a hand-off to the peer's
/// host address) and the native relay this agent can use. Pure: JSON in and out; the envelope
/// around it is `SealedEnvelope`'s.
public struct SessionDescription: Equatable, Sendable {
    public var ufrag: String
    public var password: String
    public var candidates: [ICECandidate]
    /// In an answer: the offer's ufrag (an answer to an older offer is ignored).
    public var answering: String?
    public var wireGuardPort: UInt16?
    /// The `wgrelay:` URL of the native relay this agent offers.
    public var native: String?

    public init(ufrag: String, password: String, candidates: [ICECandidate], answering: String? = nil,
                wireGuardPort: UInt16? = nil, native: String? = nil) {
        self.ufrag = ufrag
        self.password = password
        self.candidates = candidates
        self.answering = answering
        self.wireGuardPort = wireGuardPort
        self.native = native
    }

    public var json: JSONValue {
        var members: [(String, JSONValue)] = [("ufrag", .string(ufrag)), ("pwd", .string(password)),
                                             ("candidates", .array(candidates.map { .string($0.sdp) }))]
        if let answering { members.append(("offer", .string(answering))) }
        if let wireGuardPort { members.append(("wg_port", .number(Double(wireGuardPort)))) }
        if let native { members.append(("native", .string(native))) }
        return .object(members)
    }

    /// nil without ICE credentials. Candidates that do not parse are left out, as is a port out
    /// of range; the peer's other fields are taken as they are (they only ever name its own
    /// choices).
    public init?(_ body: JSONValue) {
        guard let ufrag = body["ufrag"]?.string, let password = body["pwd"]?.string else { return nil }
        self.ufrag = ufrag
        self.password = password
        candidates = (body["candidates"]?.array ?? []).compactMap { $0.string.flatMap(ICECandidate.init(sdp:)) }
        answering = body["offer"]?.string
        if let port = body["wg_port"]?.number, port >= 1, port <= 65535, port == port.rounded() { wireGuardPort = UInt16(port) }
        native = body["native"]?.string
    }
}
