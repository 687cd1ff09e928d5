import FerryCore
import FerryWire

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
    private var peerReflexiveBudget: TokenBucket
    /// Requests from addresses this session will not learn (caps, rate), and remote candidates
    /// refused as unusable: dropped unanswered, counted for the status.
    public private(set) var refusedPeerReflexive = 0
    public private(set) var refusedRemotes = 0

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
    /// Bounds on what a remote agent (or anyone replaying its checks) can make this session
    /// hold and send: remote candidates (signalled and peer-reflexive), pairs, and new
    /// peer-reflexive addresses learned per second (each costs an answer and a triggered check
    /// to that address, so unbounded learning reflects traffic at spoofed sources).
    public static let maxRemotes = 32
    public static let maxPairs = 128
    public static let peerReflexivePerSecond = 2.0
    public static let peerReflexiveBurst = 4.0

    public init(controlling: Bool, now: UInt64, ufrag: String? = nil, password: String? = nil, tieBreaker: UInt64? = nil) {
        self.controlling = controlling
        self.tieBreaker = tieBreaker ?? UInt64.random(in: 0...UInt64.max)
        // RFC 8445 §5.3: ufrag ≥ 24 bits, password ≥ 128 bits of randomness (ice-chars).
        localUfrag = ufrag ?? Self.iceString(8)
        localPassword = password ?? Self.iceString(24)
        started = now
        lastActivity = now
        peerReflexiveBudget = TokenBucket(capacity: Self.peerReflexiveBurst, now: now)
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

    /// Addresses that are never a remote agent's: unspecified, multicast, broadcast, link-local
    /// (loopback is kept, but pairs only with a loopback local candidate: the same host).
    public static func usableRemote(_ ip: IPAddress) -> Bool {
        if ip.isIPv4 {
            let v = UInt32(truncatingIfNeeded: ip.low)
            let first = v >> 24
            return v != 0 && first != 0 && !(224...255).contains(first) && v >> 16 != 0xA9FE
        }
        let top16 = ip.high >> 48
        return !(ip.high == 0 && ip.low == 0) && top16 >> 8 != 0xFF && top16 & 0xFFC0 != 0xFE80
    }

    static func isLoopback(_ ip: IPAddress) -> Bool {
        ip.isIPv4 ? UInt32(truncatingIfNeeded: ip.low) >> 24 == 127 : ip.high == 0 && ip.low == 1
    }

    public mutating func addRemote(_ c: ICECandidate) {
        guard c.component == 1 else { return }
        guard Self.usableRemote(c.address.ip), c.address.port != 0 else {
            refusedRemotes += 1
            return
        }
        // A peer-reflexive remote learned from a check, now signalled: keep the pairs and their
        // state, take the signalled type and priority (RFC 8445 §7.3.1.3).
        if let k = remotes.firstIndex(where: { $0.address == c.address }) {
            guard remotes[k].kind == .prflx, c.kind != .prflx else { return }
            remotes[k] = c
            for i in pairs.indices where pairs[i].remote.address == c.address { pairs[i].remote = c }
            return
        }
        guard remotes.count < Self.maxRemotes else {
            refusedRemotes += 1
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
        guard !Self.isLoopback(r.address.ip) || Self.isLoopback(l.address.ip) else { return }
        guard pairs.count < Self.maxPairs else { return }
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
        // The pair this request came in on: a known remote, or a new peer-reflexive one
        // (RFC 8445 §7.3.1.3), on the local candidate it arrived through. Integrity does not
        // cover the source address and a request carries no freshness, so a captured check
        // replays from anywhere: learning is capped and rate-limited, and a request from an
        // address not learned is dropped unanswered (no answer or check reflected at it).
        if !remotes.contains(where: { $0.address == from }) {
            guard Self.usableRemote(from.ip), remotes.count < Self.maxRemotes,
                  peerReflexiveBudget.take(1, rate: Self.peerReflexivePerSecond, capacity: Self.peerReflexiveBurst, now: now) else {
                refusedPeerReflexive += 1
                return ([], [])
            }
            var c = ICECandidate(kind: .prflx, address: from)
            c.priority = m.uint32(STUN.Attribute.priority) ?? c.priority
            addRemote(c)
        }
        // A peer-reflexive remote whose every pair failed our check (nobody there answers with
        // the password) gets no answers until its recheck is due: replays from it are not
        // reflected one for one.
        let fromPairs = pairs.indices.filter { pairs[$0].remote.address == from }
        if remotes.first(where: { $0.address == from })?.kind == .prflx, !fromPairs.isEmpty,
           fromPairs.allSatisfy({ pairs[$0].state == .failed && now < pairs[$0].nextRecheck }) {
            refusedPeerReflexive += 1
            return ([], [])
        }
        out.append(Send(via: via, to: from, bytes: STUNWriter.build(method: STUN.Method.binding, class: .success, transactionID: m.transactionID) { w in
            w.append(STUN.Attribute.xorMappedAddress, xorAddress: from)
            Array(localPassword.utf8).withUnsafeBytes { w.appendMessageIntegrity(key: $0) }
            w.appendFingerprint()
        }))
        lastActivity = now
        guard let i = pairs.firstIndex(where: { $0.remote.address == from && ($0.via == via) }) else { return (out, []) }
        // Triggered check (§7.3.1.4); a failed pair no sooner than its recheck time, so replays
        // do not turn into a stream of checks.
        if pairs[i].state == .frozen || pairs[i].state == .waiting || (pairs[i].state == .failed && now >= pairs[i].nextRecheck) {
            send(i, now: now, useCandidate: false, into: &out)
        }
        // USE-CANDIDATE (§7.3.1.5): the pair is selected only once our own check of it has
        // succeeded (a response with valid integrity, from that address, to a transaction we
        // issued): a nominating request proves nothing about where it came from, since a
        // captured one replays from any address. If our check already succeeded (and recently),
        // select now; else the triggered check selects it when it succeeds (`response`). The
        // peer's data on the pair is received meanwhile (any known remote is), and ours waits in
        // the shell's bounded hold queue for the selection (Tunnel's HeldPackets).
        if !controlling && m.has(STUN.Attribute.useCandidate) {
            pairs[i].remoteNominated = true
            if pairs[i].state == .succeeded && now < pairs[i].lastResponse + Self.lostAfter {
                if selected != i { events.append(select(i, now: now)) }
            } else if pairs[i].transaction == nil {
                send(i, now: now, useCandidate: false, into: &out)
            } else if pairs[i].attempts < Self.maxAttempts && now >= pairs[i].sentAt + Self.initialRTO / 4,
                      let bytes = checkRequest(pairs[i], tid: pairs[i].transaction!, useCandidate: pairs[i].useCandidate) {
                // In progress: retransmit now (§7.3.1.4), counted as an attempt, so replays
                // cannot make it send more than one check's retransmissions.
                pairs[i].attempts += 1
                pairs[i].sentAt = now
                out.append(Send(via: pairs[i].via, to: pairs[i].remote.address, bytes: bytes))
            }
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
        pairs[i].state = .succeeded
        pairs[i].lastResponse = now
        pairs[i].rtt = now - pairs[i].sentAt
        lastActivity = now
        if firstSuccess == nil { firstSuccess = now }
        // Unfreeze the rest of the list (one stream: everything waits).
        for j in pairs.indices where pairs[j].state == .frozen { pairs[j].state = .waiting }
        if controlling && pairs[i].useCandidate && selected != i {
            events.append(select(i, now: now))
        } else if !controlling && pairs[i].remoteNominated && selected != i {
            events.append(select(i, now: now))
        }
        return ([], events)
    }
}
