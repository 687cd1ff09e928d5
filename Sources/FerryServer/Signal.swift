import FerryCore
import Synchronization
import DequeModule
import FerrySystem
import FerryWire
import FerrySignal

/// The in-process `SignalDirectory`: a lock, touched on registration, on lookup of a message's
/// recipient and on presence changes; never on the packet path. Replies are immediate: the
/// caller is a worker on its own thread, which is where a reply must run.
final class SignalHub: SignalDirectory {
    let instance: String

    private struct State {
        var peers: [String: SignalEntry] = [:]
        /// Watched key → who watches it (with the watcher's network).
        var watchers: [String: [SignalLocation: String]] = [:]
    }

    private let state = Mutex(State())

    init(instance: String) { self.instance = instance }

    func register(_ peer: String, _ e: SignalEntry, reply: @Sendable (SignalEntry?) -> Void) {
        let old = state.withLock { s in
            let old = s.peers[peer]
            s.peers[peer] = e
            return old
        }
        reply(old)
    }

    func unregister(_ peer: String, _ e: SignalEntry, reply: @Sendable (Bool) -> Void) {
        let removed = state.withLock { s in
            guard s.peers[peer] == e else { return false }
            s.peers[peer] = nil
            return true
        }
        reply(removed)
    }

    func lookup(_ peer: String, reply: @Sendable (SignalEntry?) -> Void) { reply(state.withLock { $0.peers[peer] }) }

    var count: Int { state.withLock { $0.peers.count } }

    func subscribe(_ w: SignalLocation, network: String, to peers: [String], reply: @Sendable ([String]) -> Void) {
        let online = state.withLock { s in
            var online: [String] = []
            for p in peers {
                s.watchers[p, default: [:]][w] = network
                if s.peers[p]?.network == network { online.append(p) }
            }
            return online
        }
        reply(online)
    }

    func unsubscribe(_ w: SignalLocation, from peers: [String]) {
        state.withLock { s in
            for p in peers {
                s.watchers[p]?[w] = nil
                if s.watchers[p]?.isEmpty == true { s.watchers[p] = nil }
            }
        }
    }

    func watchers(of peer: String, network: String, reply: @Sendable ([SignalLocation]) -> Void) {
        reply(state.withLock { s in (s.watchers[peer] ?? [:]).filter { $0.value == network }.map(\.key) })
    }
}

/// A message for a connection on another worker, carried in batches over the mailbox.
struct SignalDelivery: Sendable {
    let conn: ConnectionID
    let frame: [UInt8]
    /// Monotonic time the message arrived, for the routing-latency histogram (0: not routed).
    let received: UInt64
    /// Close the connection after the frame (replaced).
    let closeAfter: Bool
}

/// Counters of signaling (docs/metrics.md).
/// Signaling's counters, registered here with their names (docs/metrics.md). Reasons are the
/// protocol's own error codes (docs/signaling.md), so a refused peer and the metric agree.
struct SignalCounters {
    let registrations: CounterID
    let connected: CounterID
    let authFailures: [SignalErrorCode: CounterID]
    let routed: CounterID
    let dropped: [SignalErrorCode: CounterID]
    let queueDropped: CounterID
    let latency: HistogramID
    let queued: CounterID

    static let authFailureCodes: [SignalErrorCode] = [.authFailed, .badProof, .tokenExpired, .wrongNetwork, .notAuthenticated]
    static let dropCodes: [SignalErrorCode] = [.badJSON, .badMessage, .unsupportedVersion, .unknownType, .payloadTooLarge,
                                               .notAuthenticated, .peerOffline, .rateLimited]

    init(registering registry: some CounterRegistry) {
        var auth: [SignalErrorCode: CounterID] = [:]
        for c in SignalCounters.authFailureCodes {
            auth[c] = registry.counter("ferry_signal_auth_failures_total", "Signaling connections refused at authentication, by reason.",
                                       labels: [("reason", c.rawValue)])
        }
        var dropped: [SignalErrorCode: CounterID] = [:]
        for c in SignalCounters.dropCodes {
            dropped[c] = registry.counter("ferry_signal_messages_dropped_total", "Signaling messages not delivered, by reason.",
                                          labels: [("reason", c.rawValue)])
        }
        authFailures = auth
        self.dropped = dropped
        registrations = registry.counter("ferry_signal_registrations_total", "Successful signaling authentications.")
        connected = registry.gauge("ferry_signal_peers_connected", "Authenticated signaling connections, summed over workers.")
        routed = registry.counter("ferry_signal_messages_routed_total", "Signaling messages routed to a connected peer.")
        queueDropped = registry.counter("ferry_signal_queue_dropped_total", "Messages dropped (oldest first) from a peer's full outbound queue.")
        latency = registry.histogram("ferry_signal_routing_latency_microseconds", "From a message's arrival to its queueing for the recipient.",
                                     bounds: [50, 100, 250, 500, 1000, 2000, 3000, 4000, 5000, 7500, 10000, 50000, 250_000, 1_000_000],
                                     labels: [])
        queued = registry.gauge("ferry_signal_queued_messages", "Messages waiting in peers' outbound queues.")
    }
}

/// Every worker's `SignalWorker`, indexed by worker. Filled before the workers start, then only
/// read; each entry is used only on its own worker's thread (a batch posted to a worker's loop
/// runs there), hence `@unchecked Sendable`.
final class SignalWorkers: @unchecked Sendable {
    var all: [SignalWorker] = []
}

/// Signaling on one worker: its sessions and the batches it sends to other workers.
/// Ownership: the worker's loop thread (the hub is the only shared part).
///
/// A peer is reached only through `sessions`, keyed by connection id, and leaves it when its
/// connection closes (`closed`): deliveries, presence and the connection's refills look the id
/// up, so a message for a peer that just went finds nothing (and is counted), never a dangling
/// object. Connection ids count up per worker (32 bits, skipping live ones): an id comes back
/// only after four billion connections on one worker.
final class SignalWorker {
    final class Peer {
        let session: SignalSession
        let conn: StreamConnection
        /// Frames waiting for the connection; bounded by `queueLimit`, oldest dropped first.
        var pending = Deque<[UInt8]>()
        var watching: [String] = []
        var registered: (peer: String, network: String)?
        /// For the session log: what came in and went out, and why the server ended it (nil:
        /// the connection's own close reason).
        var messagesIn: UInt64 = 0, bytesIn: UInt64 = 0, messagesOut: UInt64 = 0, bytesOut: UInt64 = 0
        var endReason: String?
        init(session: SignalSession, conn: StreamConnection) {
            self.session = session
            self.conn = conn
        }
    }

    private let index: Int
    private unowned let loop: EventLoop
    private let hub: any SignalDirectory
    private(set) var policy: SignalPolicy
    private let counters: SignalCounters
    private let metrics: CounterBlock
    private let queueLimit: Int
    private let authTimeout: UInt64
    private let registry: SignalWorkers
    private let loops: [EventLoop]
    private let sessionLog: SessionLog
    private var sessions: [ConnectionID: Peer] = [:]
    private var authenticated = 0
    private var outbox: [Int: [SignalDelivery]] = [:]
    /// Frames in all peers' queues on this worker (the queued-messages gauge).
    private var queued = 0
    private var lastPing: UInt64 = 0
    /// Below this many queued bytes a frame goes straight to the connection; above, it waits in
    /// the peer's message queue, which drops its oldest when full.
    static let directWriteBytes = 64 * 1024

    init(index: Int, loop: EventLoop, hub: any SignalDirectory, policy: SignalPolicy, counters: SignalCounters, metrics: CounterBlock,
         queueLimit: Int, authTimeoutSeconds: Int, registry: SignalWorkers, loops: [EventLoop], sessionLog: SessionLog) {
        self.index = index
        self.sessionLog = sessionLog
        self.loop = loop
        self.hub = hub
        self.policy = policy
        self.counters = counters
        self.metrics = metrics
        self.queueLimit = queueLimit
        authTimeout = UInt64(authTimeoutSeconds) * 1_000_000_000
        self.registry = registry
        self.loops = loops
        loop.onIterationEnd { [unowned self] in self.flush() }
        loop.onSweep { [unowned self] now in self.sweep(now: now) }
    }

    func update(policy: SignalPolicy) { self.policy = policy }

    /// A WebSocket was opened on `/v1/signal`: start the session with its challenge.
    func opened(_ conn: StreamConnection) {
        let session = SignalSession(policy: policy, now: loop.now)
        sessions[conn.id] = Peer(session: session, conn: conn)
        send(session.hello(), to: conn)
    }

    func text(_ bytes: [UInt8], from conn: StreamConnection) {
        guard let p = sessions[conn.id] else { return }
        let received = loop.now
        p.messagesIn &+= 1
        p.bytesIn &+= UInt64(bytes.count)
        for action in p.session.receive(bytes, now: received, wallNow: wallClockSeconds()) {
            switch action {
            case .reply(let json):
                push(WebSocket.encode(.text, json), to: p)
            case .register(let peer, let network, let welcome):
                register(p, peer: peer, network: network, welcome: welcome)
            case .route(let to, let message, let offline):
                route(from: p, to: to, message: message, offline: offline, received: received)
            case .subscribe(let keys):
                guard let network = p.session.network else { continue }
                p.watching += keys.filter { !p.watching.contains($0) }
                let (registry, index, id) = (self.registry, self.index, conn.id)
                hub.subscribe(here(conn.id), network: network, to: keys) { online in
                    registry.all[index].subscribed(id, online: online)
                }
            case .unsubscribe(let keys):
                hub.unsubscribe(here(conn.id), from: keys)
                p.watching.removeAll { keys.contains($0) }
            case .dropped(let code):
                if [.authFailed, .badProof, .tokenExpired, .wrongNetwork].contains(code), p.session.peer == nil {
                    metrics.add(counters.authFailures[code]!)
                } else if let c = counters.dropped[code] {
                    metrics.add(c)
                }
            case .close(let code, let reason):
                p.endReason = "server_closed_\(code.rawValue)"
                push(WebSocket.close(code, reason: reason), to: p)
                conn.closeAfterFlush()
            }
        }
    }

    /// A connection of this worker, as the directory names it.
    private func here(_ conn: ConnectionID) -> SignalLocation {
        SignalLocation(instance: hub.instance, worker: index, connection: conn)
    }

    // Directory requests reply on this worker's thread (see `SignalDirectory`): each reply finds
    // its session again by connection id, since the connection may have closed meanwhile.

    private func register(_ p: Peer, peer: String, network: String, welcome: [UInt8]) {
        let entry = SignalEntry(location: here(p.conn.id), network: network)
        let (registry, index) = (self.registry, self.index)
        hub.register(peer, entry) { old in
            registry.all[index].registered(peer, entry: entry, replaced: old, welcome: welcome)
        }
    }

    private func registered(_ peer: String, entry: SignalEntry, replaced old: SignalEntry?, welcome: [UInt8]) {
        if let old, old != entry {
            // A second connection with the same key replaces the first, which is told why.
            let frame = WebSocket.encode(.text, SignalSession.error(.replaced, "a newer connection authenticated with this key"))
                + WebSocket.close(.replaced, reason: "replaced")
            deliver(SignalDelivery(conn: old.location.connection, frame: frame, received: 0, closeAfter: true), to: old.location)
        }
        guard let p = sessions[entry.location.connection] else {
            // Closed before the directory answered: take the registration back.
            hub.unregister(peer, entry) { _ in }
            return
        }
        metrics.add(counters.registrations)
        p.registered = (peer, entry.network)
        authenticated += 1
        metrics.set(counters.connected, UInt64(authenticated))
        push(WebSocket.encode(.text, welcome), to: p)
        announce(peer, network: entry.network, online: true)
    }

    private func subscribed(_ conn: ConnectionID, online: [String]) {
        guard let p = sessions[conn] else { return }
        for k in online { push(WebSocket.encode(.text, SignalSession.presence(k, online: true)), to: p) }
    }

    private func announce(_ peer: String, network: String, online: Bool) {
        let frame = WebSocket.encode(.text, SignalSession.presence(peer, online: online))
        let (registry, index) = (self.registry, self.index)
        hub.watchers(of: peer, network: network) { watchers in
            let me = registry.all[index]
            for w in watchers {
                me.deliver(SignalDelivery(conn: w.connection, frame: frame, received: 0, closeAfter: false), to: w)
            }
        }
    }

    private func route(from p: Peer, to: String, message: [UInt8], offline: [UInt8], received: UInt64) {
        let (registry, index, conn, network) = (self.registry, self.index, p.conn.id, p.session.network)
        hub.lookup(to) { target in
            registry.all[index].routeFound(target, from: conn, network: network, message: message, offline: offline, received: received)
        }
    }

    private func routeFound(_ target: SignalEntry?, from conn: ConnectionID, network: String?, message: [UInt8], offline: [UInt8],
                            received: UInt64) {
        // A peer signals only peers of its own network.
        guard let target, target.network == network, target.location.instance == hub.instance else {
            if let c = counters.dropped[.peerOffline] { metrics.add(c) }
            if let p = sessions[conn] { push(WebSocket.encode(.text, offline), to: p) }
            return
        }
        metrics.add(counters.routed)
        deliver(SignalDelivery(conn: target.location.connection, frame: WebSocket.encode(.text, message), received: received,
                               closeAfter: false), to: target.location)
    }

    /// To a connection on this instance: this worker's directly, another's in its next batch.
    /// Connections of other instances are theirs to reach (not yet: one instance per directory).
    private func deliver(_ d: SignalDelivery, to location: SignalLocation) {
        guard location.instance == hub.instance else { return }
        if location.worker == index { receive([d]) } else { outbox[location.worker, default: []].append(d) }
    }

    /// Deliveries from any worker (this one, or a batch from another's mailbox).
    func receive(_ batch: [SignalDelivery]) {
        for d in batch {
            guard let p = sessions[d.conn] else {
                if let c = counters.dropped[.peerOffline] { metrics.add(c) }
                continue
            }
            push(d.frame, to: p)
            if d.received > 0 { counters.latency.observe((loop.now &- d.received) / 1000, in: metrics) }
            if d.closeAfter {
                // Only a replacement closes through a delivery.
                p.endReason = "replaced"
                p.session.closed()
                p.conn.closeAfterFlush()
            }
        }
    }

    /// Queues a frame for a peer: straight to the connection while it keeps up, else into the
    /// peer's bounded queue, which drops its oldest message when full. The connection takes
    /// from the queue whenever its output drains (`refill`).
    private func push(_ frame: [UInt8], to p: Peer) {
        guard !p.conn.closed else { return }
        if p.pending.isEmpty && p.conn.queuedBytes < SignalWorker.directWriteBytes {
            frame.withUnsafeBytes { _ = p.conn.enqueue($0, droppable: false) }
            p.messagesOut &+= 1
            p.bytesOut &+= UInt64(frame.count)
            return
        }
        if p.pending.count >= queueLimit {
            p.pending.removeFirst()
            queued -= 1
            metrics.add(counters.queueDropped)
        }
        p.pending.append(frame)
        queued += 1
        metrics.set(counters.queued, UInt64(queued))
    }

    /// `conn` wrote everything it had: move queued frames into it, up to the direct-write
    /// bound. True when it got more to write.
    func refill(_ conn: StreamConnection) -> Bool {
        guard let p = sessions[conn.id], !p.pending.isEmpty else { return false }
        var moved = false
        while !conn.closed, conn.queuedBytes < SignalWorker.directWriteBytes, let frame = p.pending.popFirst() {
            queued -= 1
            frame.withUnsafeBytes { _ = conn.enqueue($0, droppable: false) }
            p.messagesOut &+= 1
            p.bytesOut &+= UInt64(frame.count)
            moved = true
        }
        // An emptied queue gives its storage back: a peer that once fell behind costs no more.
        if p.pending.isEmpty { p.pending = Deque() }
        metrics.set(counters.queued, UInt64(queued))
        return moved && !conn.closed
    }

    /// End of the loop iteration: batches for other workers go out through their mailboxes.
    private func flush() {
        for (w, batch) in outbox where !batch.isEmpty {
            loops[w].execute { [registry] l in registry.all[l.index].receive(batch) }
        }
        outbox.removeAll(keepingCapacity: true)
    }

    /// The server is draining: every peer is told so and closed with 1001 (going away), so it
    /// reconnects to another instance while relayed sessions finish.
    func drain() {
        let frame = WebSocket.encode(.text, SignalSession.error(.draining, "this server is shutting down; reconnect elsewhere"))
            + WebSocket.close(.goingAway, reason: "draining")
        for p in sessions.values {
            p.endReason = "draining"
            p.session.closed()
            push(frame, to: p)
            p.conn.closeAfterFlush()
        }
    }

    func closed(_ conn: StreamConnection) {
        guard let p = sessions.removeValue(forKey: conn.id) else { return }
        if !p.pending.isEmpty {
            queued -= p.pending.count
            metrics.set(counters.queued, UInt64(queued))
        }
        if p.registered != nil { authenticated -= 1 }
        if !p.watching.isEmpty { hub.unsubscribe(here(conn.id), from: p.watching) }
        if let (peer, network) = p.registered {
            let (registry, index) = (self.registry, self.index)
            hub.unregister(peer, SignalEntry(location: here(conn.id), network: network)) { removed in
                if removed { registry.all[index].announce(peer, network: network, online: false) }
            }
        }
        p.session.closed()
        metrics.set(counters.connected, UInt64(max(0, authenticated)))
        if let (peer, network) = p.registered, sessionLog.enabled {
            let seconds = (loop.now &- conn.started) / 1_000_000_000
            let reason = p.endReason ?? conn.closeReason.map { $0 == .client ? "client_closed" : $0.label } ?? "closed"
            sessionLog.signalingEnded(SessionLog.Signaling(
                peer: peer, network: network, client: conn.peer, transport: conn.isTLS ? "wss" : "ws",
                started: wallClockSeconds() - seconds, durationSeconds: seconds,
                messagesIn: p.messagesIn, bytesIn: p.bytesIn, messagesOut: p.messagesOut, bytesOut: p.bytesOut, reason: reason))
        }
    }

    /// Once a second: close sessions that did not authenticate in time; ping the others every
    /// ping interval (a pong, like any byte, keeps the connection out of the idle timeout).
    private func sweep(now: UInt64) {
        let ping = UInt64(policy.pingInterval) * 1_000_000_000
        let pingNow = now - lastPing >= ping
        if pingNow { lastPing = now }
        for p in sessions.values {
            if p.session.state == .awaitingAuth && now - p.conn.started > authTimeout {
                metrics.add(counters.authFailures[.notAuthenticated]!)
                p.session.closed()
                // As every 4001: the error first, so a client can tell why (docs/signaling.md).
                push(WebSocket.encode(.text, SignalSession.error(.notAuthenticated, "no auth within \(authTimeout / 1_000_000_000) s")), to: p)
                push(WebSocket.close(.unauthorized, reason: "authentication timed out"), to: p)
                p.conn.closeAfterFlush()
            } else if pingNow && p.registered != nil {
                push(WebSocket.encode(.ping, [UInt8]()), to: p)
            }
        }
    }

    // MARK: The admin API

    /// One authenticated session, as `/v1/peers` lists it.
    struct PeerRecord: Sendable {
        var peer: String
        var network: String
        var client: SocketAddress
        var transport: String
        var ageSeconds: UInt64
        var messagesIn: UInt64, bytesIn: UInt64, messagesOut: UInt64, bytesOut: UInt64
        var queued: Int
    }

    func peerRecords() -> [PeerRecord] {
        let now = loop.now
        return sessions.values.compactMap { p in
            guard let (peer, network) = p.registered else { return nil }
            return PeerRecord(peer: peer, network: network, client: p.conn.peer, transport: p.conn.isTLS ? "wss" : "ws",
                              ageSeconds: (now &- p.conn.started) / 1_000_000_000, messagesIn: p.messagesIn, bytesIn: p.bytesIn,
                              messagesOut: p.messagesOut, bytesOut: p.bytesOut, queued: p.pending.count)
        }
    }

    /// Ends the authenticated sessions `matching` selects: told why (1008, "ended by the
    /// operator"), logged with `ended_by_operator`. Returns how many.
    func endSessions(matching: (PeerRecord) -> Bool) -> Int {
        let frame = WebSocket.close(.policyViolation, reason: "ended by the operator")
        var ended = 0
        for record in peerRecords() where matching(record) {
            guard let p = sessions.values.first(where: { $0.registered?.peer == record.peer }) else { continue }
            p.endReason = "ended_by_operator"
            p.session.closed()
            push(frame, to: p)
            p.conn.closeAfterFlush()
            ended += 1
        }
        return ended
    }

    private func send(_ json: [UInt8], to conn: StreamConnection) {
        guard let p = sessions[conn.id] else { return }
        push(WebSocket.encode(.text, json), to: p)
    }
}
