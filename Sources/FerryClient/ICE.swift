import FerryCore
import FerryWire

/// An ICE candidate (RFC 8445 §5.1) in the SDP attribute form of RFC 8839 §5.1, which aioice,
/// libnice and browsers read: `FOUNDATION 1 udp PRIORITY ADDRESS PORT typ TYPE [raddr A rport P]`.
public struct ICECandidate: Equatable, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable { case host, srflx, prflx, relay }

    public var foundation: String
    public var component: Int
    public var priority: UInt32
    public var address: SocketAddress
    public var kind: Kind
    public var related: SocketAddress?

    public init(kind: Kind, address: SocketAddress, base: SocketAddress? = nil, localPreference: UInt16 = 65535, component: Int = 1) {
        self.kind = kind
        self.address = address
        self.component = component
        related = kind == .host ? nil : base
        priority = ICECandidate.priority(kind, localPreference: localPreference, component: component)
        // RFC 8445 §5.1.1.3: the same for candidates of one type, base and server.
        let key = "\(kind.rawValue)|udp|\(base.map { "\($0.ip)" } ?? "\(address.ip)")"
        foundation = String(Crypto.hex(Crypto.sha256(Array(key.utf8))).prefix(8))
    }

    /// RFC 8445 §5.1.2.1: 2^24 · type preference + 2^8 · local preference + (256 − component).
    public static func priority(_ kind: Kind, localPreference: UInt16, component: Int) -> UInt32 {
        let type: UInt32 = switch kind { case .host: 126; case .prflx: 110; case .srflx: 100; case .relay: 0 }
        return type << 24 + UInt32(localPreference) << 8 + UInt32(256 - component)
    }

    public init?(sdp text: String) {
        var t = Substring(text)
        if t.hasPrefix("a=") { t = t.dropFirst(2) }
        if t.hasPrefix("candidate:") { t = t.dropFirst(10) }
        let f = t.split(separator: " ")
        guard f.count >= 8, f[2].lowercased() == "udp", f[6] == "typ", let component = Int(f[1]),
              let priority = UInt32(f[3]), let ip = IPAddress(String(f[4])), let port = UInt16(f[5]),
              let kind = Kind(rawValue: String(f[7])) else { return nil }
        foundation = String(f[0])
        self.component = component
        self.priority = priority
        address = SocketAddress(ip: ip, port: port)
        self.kind = kind
        var raddr: IPAddress?, rport: UInt16?
        var i = 8
        while i + 1 < f.count {
            if f[i] == "raddr" { raddr = IPAddress(String(f[i + 1])) }
            if f[i] == "rport" { rport = UInt16(f[i + 1]) }
            i += 2
        }
        related = raddr.map { SocketAddress(ip: $0, port: rport ?? 0) }
    }

    public var sdp: String {
        var s = "\(foundation) \(component) udp \(priority) \(address.ip) \(address.port) typ \(kind.rawValue)"
        if let related { s += " raddr \(related.ip) rport \(related.port)" }
        return s
    }

    public var description: String { sdp }
}

/// How a local candidate sends: straight from the agent's UDP socket (host, server-reflexive),
/// or through its TURN allocation (relayed: the shell wraps the bytes in ChannelData or a Send
/// indication to the remote address).
public enum ICEVia: Equatable, Hashable, Sendable { case direct, relayed }

/// The path a pair gives data: which way, to which remote transport address.
public struct ICERoute: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let via: ICEVia
    public let remote: SocketAddress
    public let localKind: ICECandidate.Kind
    public let remoteKind: ICECandidate.Kind
    /// Whether data crosses a TURN relay (ours, theirs, or both) rather than going peer to peer.
    public var throughRelay: Bool { via == .relayed || remoteKind == .relay }
    public var description: String {
        via == .direct ? "direct to \(remote) (\(localKind.rawValue)→\(remoteKind.rawValue))"
                       : "relayed to \(remote) (\(localKind.rawValue)→\(remoteKind.rawValue))"
    }
}

/// One ICE session with one remote agent (RFC 8445, one component, UDP), as a pure state machine:
/// candidate pairs in priority order, connectivity checks with STUN short-term credentials
/// (USERNAME `remote:local`, MESSAGE-INTEGRITY with the receiver's password, PRIORITY,
/// ICE-CONTROLLING/-CONTROLLED with the tie-breaker, FINGERPRINT), triggered checks and
/// peer-reflexive remotes, regular nomination by the controlling agent, and after selection
/// consent freshness (RFC 7675) on the selected pair.
///
/// Chosen beyond the RFCs, for a tunnel that must keep working: the selected pair is checked
/// every second and declared lost after `lostAfter` without an answer (RFC 7675 allows up to
/// 30 s; a WireGuard tunnel should move within seconds), and while the selected pair is relayed
/// the direct pairs are re-checked every `upgradeInterval`, so a path that appears later
/// (NAT state, a route) takes over: the controlling agent nominates it. The other succeeded
/// pairs are kept checked as standbys, so moving away from a lost path takes one nomination.
public struct ICEAgent {
    public enum PairState: String, Sendable { case frozen, waiting, inProgress, succeeded, failed }

    public struct Pair: Sendable {
        public let local: ICECandidate
        public internal(set) var remote: ICECandidate
        public var state = PairState.frozen
        public var nominated = false
        var remoteNominated = false
        var transaction: TransactionID?
        var sentAt: UInt64 = 0
        var attempts = 0
        var useCandidate = false
        public var lastResponse: UInt64 = 0
        public var rtt: UInt64 = 0
        var nextRecheck: UInt64 = 0

        public var via: ICEVia { local.kind == .relay ? .relayed : .direct }
        public var route: ICERoute { ICERoute(via: via, remote: remote.address, localKind: local.kind, remoteKind: remote.kind) }

        func priority(controlling: Bool) -> UInt64 {
            let g = UInt64(controlling ? local.priority : remote.priority), d = UInt64(controlling ? remote.priority : local.priority)
            return (1 << 32) * min(g, d) + 2 * max(g, d) + (g > d ? 1 : 0)
        }
    }

    /// Bytes to send, and how.
    public struct Send: Equatable, Sendable {
        public let via: ICEVia
        public let to: SocketAddress
        public let bytes: [UInt8]
    }

    public enum Event: Equatable, Sendable {
        /// Data should take this route from now on (first selection, or a better or surviving one).
        case selected(ICERoute)
        /// Nothing works: every pair failed, or the selected one lost consent with no other alive.
        case failed(reason: String)
    }

    public private(set) var controlling: Bool
    public let tieBreaker: UInt64
    public let localUfrag: String
    public let localPassword: String
    public private(set) var remoteUfrag: String?
    public private(set) var remotePassword: String?
    public private(set) var locals: [ICECandidate] = []
    public private(set) var remotes: [ICECandidate] = []
    public private(set) var pairs: [Pair] = []
    public private(set) var selected: Int?
    public private(set) var failed = false
    private var nextPace: UInt64 = 0
    private var firstSuccess: UInt64?
    private var lastActivity: UInt64 = 0
    private let started: UInt64

    /// RFC 8445 §14.2 pacing (Ta); retransmissions of a check from `initialRTO`, doubling.
    public static let pace: UInt64 = 20_000_000
    public static let initialRTO: UInt64 = 200_000_000
    public static let maxAttempts = 6
    /// The controlling agent waits this long after the first success for better pairs.
    public static let nominationDelay: UInt64 = 250_000_000
    public static let consentInterval: UInt64 = 1_000_000_000
    public static let lostAfter: UInt64 = 4_000_000_000
    public static let upgradeInterval: UInt64 = 3_000_000_000
    /// Succeeded pairs that are not selected are re-checked this often while the selected pair
    /// is relayed (or lost), so one is known to work when it fails; a working direct path sends
    /// nothing through a relay.
    public static let standbyInterval: UInt64 = 2_000_000_000

    public init(controlling: Bool, now: UInt64, ufrag: String? = nil, password: String? = nil, tieBreaker: UInt64? = nil) {
        self.controlling = controlling
        self.tieBreaker = tieBreaker ?? UInt64.random(in: 0...UInt64.max)
        // RFC 8445 §5.3: ufrag ≥ 24 bits, password ≥ 128 bits of randomness (ice-chars).
        localUfrag = ufrag ?? Self.iceString(8)
        localPassword = password ?? Self.iceString(24)
        started = now
        lastActivity = now
    }

    static func iceString(_ n: Int) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        return String(decoding: Crypto.randomBytes(n).map { alphabet[Int($0) & 63] }, as: UTF8.self)
    }

    public var selectedPair: Pair? { selected.map { pairs[$0] } }

    public mutating func setRemoteCredentials(ufrag: String, password: String) {
        remoteUfrag = ufrag
        remotePassword = password
    }

    public mutating func addLocal(_ c: ICECandidate) {
        guard !locals.contains(where: { $0.address == c.address && $0.kind == c.kind }) else { return }
        locals.append(c)
        for r in remotes { addPair(c, r) }
    }

    public mutating func addRemote(_ c: ICECandidate) {
        guard c.component == 1 else { return }
        // A peer-reflexive remote learned from a check, now signalled: keep the pairs and their
        // state, take the signalled type and priority (RFC 8445 §7.3.1.3).
        if let k = remotes.firstIndex(where: { $0.address == c.address }) {
            guard remotes[k].kind == .prflx, c.kind != .prflx else { return }
            remotes[k] = c
            for i in pairs.indices where pairs[i].remote.address == c.address { pairs[i].remote = c }
            return
        }
        remotes.append(c)
        for l in locals { addPair(l, c) }
    }

    private mutating func addPair(_ l: ICECandidate, _ r: ICECandidate) {
        guard l.address.ip.isIPv4 == r.address.ip.isIPv4 else { return }
        // A server-reflexive local candidate sends from its base: the host pair covers it
        // (RFC 8445 §6.1.2.4); keep it out so the list holds no redundant pairs.
        guard l.kind != .srflx else { return }
        guard !pairs.contains(where: { $0.local == l && $0.remote.address == r.address }) else { return }
        pairs.append(Pair(local: l, remote: r))
        let sel = selected.map { pairs[$0] }
        let c = controlling
        pairs.sort { $0.priority(controlling: c) > $1.priority(controlling: c) }
        if let sel { selected = pairs.firstIndex { $0.local == sel.local && $0.remote.address == sel.remote.address } }
    }

    // MARK: Checks

    private func checkRequest(_ pair: Pair, tid: TransactionID, useCandidate: Bool) -> [UInt8]? {
        guard let remoteUfrag, let remotePassword else { return nil }
        let prflxPriority = ICECandidate.priority(.prflx, localPreference: UInt16(pair.local.priority >> 8 & 0xFFFF), component: 1)
        return STUNWriter.build(method: STUN.Method.binding, class: .request, transactionID: tid) { w in
            w.append(STUN.Attribute.username, string: "\(remoteUfrag):\(localUfrag)")
            w.append(STUN.Attribute.priority, uint32: prflxPriority)
            w.append(controlling ? STUN.Attribute.iceControlling : STUN.Attribute.iceControlled, length: 8) { p in
                p.storeBytes(of: tieBreaker.bigEndian, as: UInt64.self)
            }
            if useCandidate { w.append(STUN.Attribute.useCandidate, length: 0) { _ in } }
            Array(remotePassword.utf8).withUnsafeBytes { w.appendMessageIntegrity(key: $0) }
            w.appendFingerprint()
        }
    }

    private mutating func send(_ i: Int, now: UInt64, useCandidate: Bool, into out: inout [Send]) {
        let tid = TransactionID.random()
        guard let bytes = checkRequest(pairs[i], tid: tid, useCandidate: useCandidate) else { return }
        pairs[i].transaction = tid
        pairs[i].sentAt = now
        pairs[i].attempts = 1
        pairs[i].useCandidate = useCandidate
        if pairs[i].state != .succeeded { pairs[i].state = .inProgress }
        out.append(Send(via: pairs[i].via, to: pairs[i].remote.address, bytes: bytes))
    }

    /// Checks, retransmissions, nomination, consent and upgrades due at `now`.
    public mutating func tick(now: UInt64) -> (sends: [Send], events: [Event]) {
        var out: [Send] = [], events: [Event] = []
        guard remotePassword != nil, !failed else { return (out, events) }
        // Retransmit or fail in-flight checks (a check of a succeeded pair is a consent or
        // nomination check: its failure counts against consent, below).
        for i in pairs.indices where pairs[i].transaction != nil {
            let p = pairs[i]
            let due = p.sentAt + Self.initialRTO << UInt64(p.attempts - 1)
            guard due <= now else { continue }
            if p.attempts >= Self.maxAttempts {
                pairs[i].transaction = nil
                if p.state == .inProgress { pairs[i].state = .failed; pairs[i].nextRecheck = now + Self.upgradeInterval }
                continue
            }
            if let bytes = checkRequest(p, tid: p.transaction!, useCandidate: p.useCandidate) {
                pairs[i].attempts += 1
                pairs[i].sentAt = now
                out.append(Send(via: p.via, to: p.remote.address, bytes: bytes))
            }
        }
        // One new ordinary check per pace interval: the best waiting or frozen pair, or a
        // failed direct pair due for a recheck while data is relayed (or nothing is selected).
        if now >= nextPace {
            let relayedOrNone = selected.map { pairs[$0].via == .relayed } ?? true
            if let i = pairs.indices.first(where: { pairs[$0].state == .waiting || pairs[$0].state == .frozen })
                ?? pairs.indices.first(where: { relayedOrNone && pairs[$0].via == .direct && pairs[$0].state == .failed && pairs[$0].nextRecheck <= now && pairs[$0].transaction == nil })
                ?? pairs.indices.first(where: { relayedOrLost(now) && $0 != selected && pairs[$0].state == .succeeded && pairs[$0].transaction == nil && now >= pairs[$0].lastResponse + Self.standbyInterval }) {
                send(i, now: now, useCandidate: false, into: &out)
                nextPace = now + Self.pace
            }
        }
        // Nomination (controlling): the best succeeded pair, once better ones are done or the
        // delay has passed; again whenever a better pair succeeds later (an upgrade).
        if controlling, let best = bestSucceeded(now: now) {
            let better = selected.map { pairs[best].priority(controlling: true) > pairs[$0].priority(controlling: true) || !alive($0, now: now) } ?? true
            let settled = pairs[..<best].allSatisfy { $0.state == .failed || $0.state == .succeeded }
            if better, !pairs[best].useCandidate || pairs[best].transaction == nil,
               settled || now >= (firstSuccess ?? now) + Self.nominationDelay {
                send(best, now: now, useCandidate: true, into: &out)
            }
        }
        // Consent freshness on the selected pair; moving away from a lost one.
        if let s = selected {
            if pairs[s].transaction == nil && now >= pairs[s].sentAt + Self.consentInterval {
                send(s, now: now, useCandidate: controlling && pairs[s].nominated, into: &out)
            }
            if !alive(s, now: now) {
                pairs[s].state = .failed
                pairs[s].nominated = false
                pairs[s].nextRecheck = now + Self.upgradeInterval
                selected = nil
                if !controlling, let next = bestSucceeded(now: now) {
                    selected = next
                    events.append(.selected(pairs[next].route))
                }
            }
        }
        // Give up when nothing is left to try and nothing works.
        if selected == nil, !pairs.isEmpty, pairs.allSatisfy({ $0.state == .failed }), now > started + Self.lostAfter * 2,
           pairs.allSatisfy({ $0.via == .relayed || $0.nextRecheck > now }) {
            failed = true
            events.append(.failed(reason: "every candidate pair failed"))
        }
        return (out, events)
    }

    /// Standby checks run unless a direct pair is selected and answering (so a working direct
    /// path sends nothing through any relay).
    private func relayedOrLost(_ now: UInt64) -> Bool {
        guard let s = selected else { return true }
        return pairs[s].via == .relayed || pairs[s].remote.kind == .relay || !alive(s, now: now)
    }

    private func alive(_ i: Int, now: UInt64) -> Bool {
        let usable = pairs[i].state == .succeeded || (pairs[i].nominated && pairs[i].state != .failed)
        return usable && now < max(pairs[i].lastResponse, lastSelectedAt) + Self.lostAfter
    }

    private var lastSelectedAt: UInt64 = 0

    private func bestSucceeded(now: UInt64) -> Int? {
        pairs.indices.first { pairs[$0].state == .succeeded && now < pairs[$0].lastResponse + Self.lostAfter }
    }

    /// When `tick` next has work (for the shell's timer).
    public func nextDeadline(now: UInt64) -> UInt64 { now + Self.pace }

    // MARK: Incoming STUN

    /// A STUN message that arrived from `from` (directly, or relayed by TURN). Returns what to
    /// send (answers, triggered checks) and what changed. Messages for other sessions (another
    /// ufrag) or failing integrity are ignored.
    public mutating func receive(_ m: STUNMessage, from: SocketAddress, via: ICEVia, now: UInt64) -> (sends: [Send], events: [Event]) {
        guard m.method == STUN.Method.binding else { return ([], []) }
        switch m.messageClass {
        case .request: return request(m, from: from, via: via, now: now)
        case .success, .error: return response(m, from: from, now: now)
        case .indication: return ([], [])
        }
    }

    /// Whether a Binding request is addressed to this session (USERNAME `ourUfrag:…`).
    public func owns(_ m: STUNMessage) -> Bool {
        guard let user = m.string(STUN.Attribute.username) else { return false }
        return user.hasPrefix(localUfrag + ":")
    }

    /// Whether a response answers one of this session's checks.
    public func awaits(_ tid: TransactionID) -> Bool { pairs.contains { $0.transaction == tid } }

    private mutating func request(_ m: STUNMessage, from: SocketAddress, via: ICEVia, now: UInt64) -> ([Send], [Event]) {
        guard owns(m), Array(localPassword.utf8).withUnsafeBytes({ m.verifyIntegrity(key: $0) }) else { return ([], []) }
        var out: [Send] = [], events: [Event] = []
        // Role conflict (RFC 8445 §7.3.1.1): the larger tie-breaker stays controlling.
        let theirs = m.attribute(controlling ? STUN.Attribute.iceControlling : STUN.Attribute.iceControlled)
        if let t = theirs, t.count == 8 {
            let other = t.u64(0)
            if controlling == (tieBreaker >= other) {
                out.append(Send(via: via, to: from, bytes: STUNWriter.build(method: STUN.Method.binding, class: .error, transactionID: m.transactionID) { w in
                    w.appendErrorCode(487, reason: "Role Conflict")
                    Array(localPassword.utf8).withUnsafeBytes { w.appendMessageIntegrity(key: $0) }
                    w.appendFingerprint()
                }))
                return (out, [])
            }
            controlling.toggle()
        }
        out.append(Send(via: via, to: from, bytes: STUNWriter.build(method: STUN.Method.binding, class: .success, transactionID: m.transactionID) { w in
            w.append(STUN.Attribute.xorMappedAddress, xorAddress: from)
            Array(localPassword.utf8).withUnsafeBytes { w.appendMessageIntegrity(key: $0) }
            w.appendFingerprint()
        }))
        lastActivity = now
        // The pair this request came in on: a known remote, or a new peer-reflexive one
        // (RFC 8445 §7.3.1.3), on the local candidate it arrived through.
        if !remotes.contains(where: { $0.address == from }) {
            var c = ICECandidate(kind: .prflx, address: from)
            c.priority = m.uint32(STUN.Attribute.priority) ?? c.priority
            addRemote(c)
        }
        guard let i = pairs.firstIndex(where: { $0.remote.address == from && ($0.via == via) }) else { return (out, []) }
        // Triggered check (§7.3.1.4).
        if pairs[i].state == .frozen || pairs[i].state == .waiting || pairs[i].state == .failed {
            send(i, now: now, useCandidate: false, into: &out)
        }
        // USE-CANDIDATE (§7.3.1.5). The RFC has the controlled agent wait for its own check of
        // the pair to succeed; but the controlling agent starts sending as soon as its check
        // did, and data answered before then would be dropped for want of a path. A nominating
        // request with valid integrity from that address proves the pair carries traffic from
        // the peer, and our answer goes back on it: select it now; the triggered check (and
        // consent after it) confirms it or takes it away.
        if !controlling && m.has(STUN.Attribute.useCandidate) {
            pairs[i].remoteNominated = true
            if selected != i { events.append(select(i, now: now)) }
        }
        return (out, events)
    }

    private mutating func select(_ i: Int, now: UInt64) -> Event {
        pairs[i].nominated = true
        selected = i
        lastSelectedAt = now
        return .selected(pairs[i].route)
    }

    private mutating func response(_ m: STUNMessage, from: SocketAddress, now: UInt64) -> ([Send], [Event]) {
        guard let i = pairs.firstIndex(where: { $0.transaction == m.transactionID }),
              let remotePassword, Array(remotePassword.utf8).withUnsafeBytes({ m.verifyIntegrity(key: $0) }) else { return ([], []) }
        var events: [Event] = []
        pairs[i].transaction = nil
        if m.messageClass == .error {
            if m.errorCode()?.code == 487 {
                // Switch roles and check again (§7.2.5.1).
                controlling.toggle()
                pairs[i].state = .waiting
            } else if pairs[i].state == .inProgress {
                pairs[i].state = .failed
                pairs[i].nextRecheck = now + Self.upgradeInterval
            }
            return ([], [])
        }
        // §7.2.5.2.1: the response must come from where the request went.
        guard from == pairs[i].remote.address else {
            if pairs[i].state == .inProgress { pairs[i].state = .failed }
            return ([], [])
        }
        let wasSucceeded = pairs[i].state == .succeeded
        pairs[i].state = .succeeded
        pairs[i].lastResponse = now
        pairs[i].rtt = now - pairs[i].sentAt
        lastActivity = now
        if firstSuccess == nil { firstSuccess = now }
        // Unfreeze the rest of the list (one stream: everything waits).
        for j in pairs.indices where pairs[j].state == .frozen { pairs[j].state = .waiting }
        if controlling && pairs[i].useCandidate && selected != i {
            events.append(select(i, now: now))
        } else if !controlling && pairs[i].remoteNominated && selected != i && !wasSucceeded {
            events.append(select(i, now: now))
        }
        return ([], events)
    }
}
