#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerryWire
import FerrySignal
import FerrySystem
import Synchronization

/// Signaling across ferryd instances over NATS (docs/deployment.md). This instance's peers and
/// watchers stay in the in-process `SignalHub`, so everything between local peers works as it
/// does without NATS, NATS up or down. What crosses instances:
///
/// - A message for a key not connected here is published on the key's subject as a request.
///   Only the instance holding the key subscribes to that subject, so NATS's no-responders
///   status says "connected nowhere" without a directory lookup; an instance that lost the peer
///   meanwhile answers `gone`. Either way the sender hears `peer_offline`.
/// - Registering claims the key's subject: an instance holding an older registration of the key
///   closes it with `replaced` (the newer registration wins, by wall-clock time, then instance).
/// - Presence: online/offline on the key's presence subject, taken per network by instances with
///   watchers there; a new subscribe asks the network who holds the keys (one request, one answer
///   per instance holding any of them).
/// - Heartbeats: an instance silent for `instanceTimeout` is taken as gone, and the keys it held
///   are announced offline to local watchers. When NATS returns, this instance announces its peers
///   again and asks again about what its watchers watch; nothing local reconnects.
final class NATSDirectory: SignalDirectory, NATSReceiver {
    let hub: SignalHub
    let link: NATSLink
    let subjects: ClusterSubjects
    let stats: NATSStats
    var instance: String { hub.instance }
    /// Hands deliveries to a worker's loop (set once before the link starts).
    let sink: @Sendable (Int, [SignalDelivery]) -> Void
    static let instanceTimeout: UInt64 = 3_000_000_000
    static let maxInstances = 1024
    /// Keys per network awaiting their second question; past it the next tick asks about all.
    static let maxConfirm = 4096

    struct Network {
        let name: String
        var peers = 0
        var watches = 0
        /// Watched keys known online at another instance, and which.
        var remote: [String: String] = [:]
    }

    struct State {
        /// Local peers' registration times (wall-clock ns), for claims.
        var since: [String: UInt64] = [:]
        /// Networks with local peers or watchers, by subject token.
        var networks: [String: Network] = [:]
        /// Other instances, by the monotonic time of their last heartbeat.
        var instances: [String: UInt64] = [:]
        /// An instance appeared or NATS came back: ask again at the next heartbeat tick.
        var resyncWanted = false
        /// Keys just subscribed to, asked about once more at the next tick: a key registering at
        /// another instance while this subscribe travels can miss both the query and its own
        /// presence announcement (each instance's interest reaches the other's node a route hop
        /// late); the second question, a second later, closes that window. By network name.
        var confirm: [String: Set<String>] = [:]
        var confirmDue: [String: Set<String>] = [:]
    }

    let state = Mutex(State())
    /// Per worker: routed messages awaiting a possible no-responders, by sequence (a ring: an
    /// answer later than `pendingSlots` messages of that worker finds nothing and is counted).
    let pending: [PendingBox]

    init(hub: SignalHub, link: NATSLink, subjects: ClusterSubjects, stats: NATSStats, workers: Int,
         sink: @escaping @Sendable (Int, [SignalDelivery]) -> Void) {
        self.hub = hub
        self.link = link
        self.subjects = subjects
        self.stats = stats
        self.sink = sink
        pending = (0..<workers).map { _ in PendingBox() }
    }

    func start() {
        // Weak: the directory owns the link and its loop; a strong hook would be a cycle.
        link.loop.onSweep { [weak self] now in self?.heartbeat(now: now) }
        link.start(receiver: self)
        link.enqueue(.subscribe(subjects.inboxWildcard))
        link.enqueue(.subscribe(subjects.heartbeatWildcard))
    }

    var count: Int { hub.count }
    var subscriptionCount: Int { hub.subscriptionCount }
    func admitRegistration(_ peer: String, now: UInt64) -> Bool { hub.admitRegistration(peer, now: now) }
    func lookup(_ peer: String, reply: @Sendable (SignalEntry?) -> Void) { reply(hub.lookupNow(peer)) }
    func watchers(of peer: String, network: String, reply: @Sendable ([SignalLocation]) -> Void) {
        reply(hub.watchersNow(of: peer, network: network))
    }

    /// Instances heard from within `instanceTimeout` (this one not counted).
    var instancesSeen: Int { state.withLock { $0.instances.count } }

    // MARK: Registration

    func register(_ peer: String, _ e: SignalEntry, reply: @Sendable (SignalEntry?) -> Void) {
        let old = hub.registerNow(peer, e)
        let since = NATSDirectory.wallNanos()
        let token = ClusterSubjects.networkToken(e.network)
        let firstInNetwork = state.withLock { s -> (Bool, String?) in
            s.since[peer] = since
            // A local replacement in the same network keeps the one subscription it had.
            if let old, old.network == e.network { return (false, nil) }
            let oldSubject = old.flatMap { subjects.peer(peer, network: $0.network) }
            if let old { leave(&s, network: ClusterSubjects.networkToken(old.network), peers: 1) }
            s.networks[token, default: Network(name: e.network)].peers += 1
            return (s.networks[token]!.peers == 1, oldSubject)
        }
        if let oldSubject = firstInNetwork.1 { link.enqueue(.unsubscribe(oldSubject)) }
        if let subject = subjects.peer(peer, network: e.network) {
            if old?.network != e.network { link.enqueue(.subscribe(subject)) }
            if firstInNetwork.0 { link.enqueue(.subscribe(subjects.query(network: e.network))) }
            publish(subject, .claim(since: since, instance: instance))
        }
        if let p = subjects.presence(peer, network: e.network) { publish(p, .presence(online: true, instance: instance)) }
        reply(old)
    }

    func unregister(_ peer: String, _ e: SignalEntry, reply: @Sendable (Bool) -> Void) {
        let removed = hub.unregisterNow(peer, e)
        if removed {
            dropLocal(peer, network: e.network)
            if let p = subjects.presence(peer, network: e.network) { publish(p, .presence(online: false, instance: instance)) }
        }
        reply(removed)
    }

    /// A local peer left (or was replaced elsewhere): its subjects go.
    func dropLocal(_ peer: String, network: String) {
        let token = ClusterSubjects.networkToken(network)
        let lastInNetwork = state.withLock { s -> Bool in
            s.since[peer] = nil
            return leave(&s, network: token, peers: 1)
        }
        if let subject = subjects.peer(peer, network: network) { link.enqueue(.unsubscribe(subject)) }
        if lastInNetwork { link.enqueue(.unsubscribe(subjects.query(network: network))) }
    }

    /// Takes `peers` local peers or `watches` subscriptions from a network; true when its peers
    /// reached zero. A network with neither is forgotten.
    @discardableResult
    private func leave(_ s: inout State, network token: String, peers: Int = 0, watches: Int = 0) -> Bool {
        guard var n = s.networks[token] else { return false }
        n.peers = max(0, n.peers - peers)
        n.watches = max(0, n.watches - watches)
        s.networks[token] = n.peers == 0 && n.watches == 0 ? nil : n
        return peers > 0 && n.peers == 0
    }

    // MARK: Presence

    func subscribe(_ w: SignalLocation, network: String, to peers: [String], reply: @Sendable (SubscribeResult) -> Void) {
        let result = hub.subscribeNow(w, network: network, to: peers)
        guard case .subscribed(let online) = result else { return reply(result) }
        let token = ClusterSubjects.networkToken(network)
        let first = state.withLock { s -> Bool in
            s.networks[token, default: Network(name: network)].watches += peers.count
            return s.networks[token]!.watches == peers.count
        }
        if first { link.enqueue(.subscribe(subjects.presenceWildcard(network: network))) }
        reply(result)
        let local = Set(online)
        let ask = peers.filter { !local.contains($0) }
        if !ask.isEmpty && link.isConnected.load(ordering: .relaxed) {
            let replyTo = subjects.queryReply(worker: w.worker, connection: w.connection, network: network)
            link.enqueue(.publish(subject: subjects.query(network: network), reply: replyTo, payload: ClusterPayload.query(ask)))
            stats.add(.messagesOut)
            state.withLock { s in
                if s.confirm[network, default: []].count + ask.count <= NATSDirectory.maxConfirm {
                    s.confirm[network, default: []].formUnion(ask)
                } else {
                    s.resyncWanted = true
                }
            }
        }
    }

    func unsubscribe(_ w: SignalLocation, from peers: [String]) {
        let removed = hub.unsubscribeNow(w, from: peers)
        for (network, n) in removed {
            let token = ClusterSubjects.networkToken(network)
            let last = state.withLock { s -> Bool in
                leave(&s, network: token, watches: n)
                return (s.networks[token]?.watches ?? 0) == 0
            }
            if last { link.enqueue(.unsubscribe(subjects.presenceWildcard(network: network))) }
        }
    }

    // MARK: Routing

    func forward(_ message: [UInt8], to peer: String, network: String, from: SignalLocation, offline: [UInt8]) -> ForwardResult {
        guard link.isConnected.load(ordering: .relaxed) else {
            stats.add(.droppedUnavailable)
            return .unavailable("signaling across servers is unreachable now (NATS)")
        }
        guard message.count <= link.maxPayload.load(ordering: .relaxed) else {
            stats.add(.droppedMaxPayload)
            return .unavailable("the message is over NATS's max_payload")
        }
        guard let subject = subjects.peer(peer, network: network) else { return .offline }
        let sequence = pending[from.worker].ring.withLock { $0.insert(connection: from.connection, offline: offline) }
        guard link.enqueue(.publish(subject: subject, reply: subjects.routeReply(worker: from.worker, sequence: sequence), payload: message)) else {
            stats.add(.droppedBacklog)
            return .unavailable("this server's queue to NATS is full")
        }
        stats.add(.messagesOut)
        return .sent
    }

    private func publish(_ subject: String, _ payload: ClusterPayload) {
        guard link.isConnected.load(ordering: .relaxed) else { return }
        if link.enqueue(.publish(subject: subject, reply: nil, payload: payload.encoded())) { stats.add(.messagesOut) } else { stats.add(.droppedBacklog) }
    }

    static func wallNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

final class PendingBox: Sendable {
    let ring = Mutex(PendingRing())
}

/// One worker's routed messages that may still come back undelivered. Touched by that worker
/// (insert) and by the NATS delivery thread (take), under its own lock.
struct PendingRing {
    static let slots = 16384
    private var entries: [(sequence: UInt32, connection: ConnectionID, offline: [UInt8])?] = Array(repeating: nil, count: slots)
    private var next: UInt32 = 0

    mutating func insert(connection: ConnectionID, offline: [UInt8]) -> UInt32 {
        next &+= 1
        entries[Int(next % UInt32(PendingRing.slots))] = (next, connection, offline)
        return next
    }

    mutating func take(_ sequence: UInt32) -> (ConnectionID, [UInt8])? {
        let i = Int(sequence % UInt32(PendingRing.slots))
        guard let e = entries[i], e.sequence == sequence else { return nil }
        entries[i] = nil
        return (e.connection, e.offline)
    }
}
