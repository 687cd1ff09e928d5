import FerryCore
import Synchronization
import DequeModule
import FerrySystem
import FerryWire
import FerrySignal
import FerryTURN

/// A message for a connection on another worker, carried in batches over the mailbox.
struct SignalDelivery: Sendable {
    let conn: ConnectionID
    let frame: [UInt8]
    /// Monotonic time the message arrived, for the routing-latency histogram (0: not routed).
    let received: UInt64
    /// Close the connection after the frame (replaced).
    let closeAfter: Bool
    /// The frame is a `peer_offline` answer from another instance (counted as such).
    var offline = false

    init(conn: ConnectionID, frame: [UInt8], received: UInt64, closeAfter: Bool, offline: Bool = false) {
        self.conn = conn
        self.frame = frame
        self.received = received
        self.closeAfter = closeAfter
        self.offline = offline
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
        var pendingBytes = 0
        /// When an unauthenticated connection told to go is closed whatever it has not read.
        var hardCloseAt: UInt64?
        /// The keys this peer watches (a set: subscribe and unsubscribe cost their own size).
        var watching: Set<String> = []
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
    private let subscriptionLimits: SubscriptionLimits
    /// Authentications per source address on this worker (`signal.registrations_per_second` ×20).
    private var sourceRegistrations: RateLimiter<IPAddress>
    /// Outbound queues in bytes: one peer's (`signal.queue_bytes`) and this worker's share of all
    /// peers' (`signal.queue_bytes_total` / workers).
    private let queueBytes: Int
    private let queueBytesTotal: Int
    private var queuedBytes = 0
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
         queueLimit: Int, authTimeoutSeconds: Int, registry: SignalWorkers, loops: [EventLoop], sessionLog: SessionLog,
         subscriptionLimits: SubscriptionLimits, queueBytes: Int, queueBytesTotal: Int, registrationsPerSecond: Double, registrationBurst: Double) {
        self.index = index
        self.subscriptionLimits = subscriptionLimits
        self.queueBytes = queueBytes
        self.queueBytesTotal = queueBytesTotal
        sourceRegistrations = RateLimiter(ratePerSecond: registrationsPerSecond * 20, burst: registrationBurst * 20)
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
            case .subscribe(let keys, let ref):
                subscribe(p, keys: keys, ref: ref)
            case .unsubscribe(let keys):
                let watched = keys.filter { p.watching.contains($0) }
                guard !watched.isEmpty else { continue }
                hub.unsubscribe(here(conn.id), from: watched)
                p.watching.subtract(watched)
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
        // A key, or a source, authenticating in a loop: refused before it registers (each
        // registration sends online/offline to every watcher of the key).
        guard hub.admitRegistration(peer, now: loop.now), sourceRegistrations.allow(p.conn.peer.ip, now: loop.now) else {
            metrics.add(counters.dropped[.rateLimited]!)
            p.session.closed()
            p.endReason = "registration_rate_limited"
            push(WebSocket.encode(.text, SignalSession.error(.rateLimited, "authenticating too often with this key or from this address")), to: p)
            push(WebSocket.close(.policyViolation, reason: "authenticating too often"), to: p)
            p.conn.closeAfterFlush()
            return
        }
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

    /// A subscribe: only keys not watched yet go to the directory (watching a key again costs
    /// nothing); over the per-peer cap the whole request is refused with `subscription_limit`
    /// and nothing of it is kept, and so over the network's or the server's cap (the directory's).
    private func subscribe(_ p: Peer, keys: [String], ref: JSONValue?) {
        guard let network = p.session.network else { return }
        let new = keys.filter { !p.watching.contains($0) }
        guard !new.isEmpty else { return }
        guard p.watching.count + new.count <= subscriptionLimits.perPeer else {
            refuseSubscribe(p, .peer, ref: ref)
            return
        }
        p.watching.formUnion(new)
        let (registry, index, id) = (self.registry, self.index, p.conn.id)
        hub.subscribe(here(p.conn.id), network: network, to: new) { result in
            registry.all[index].subscribed(id, keys: new, result, ref: ref)
        }
    }

    private func subscribed(_ conn: ConnectionID, keys: [String], _ result: SubscribeResult, ref: JSONValue?) {
        guard let p = sessions[conn] else {
            // Closed before the directory answered: what it stored goes again.
            if case .subscribed = result { hub.unsubscribe(here(conn), from: keys) }
            return
        }
        switch result {
        case .subscribed(let online):
            for k in online { push(WebSocket.encode(.text, SignalSession.presence(k, online: true)), to: p) }
        case .refused(let scope):
            p.watching.subtract(keys)
            refuseSubscribe(p, scope, ref: ref)
        }
    }

    private func refuseSubscribe(_ p: Peer, _ scope: SubscriptionLimits.Scope, ref: JSONValue?) {
        metrics.add(counters.subscriptionsRefused[scope]!)
        let limit = switch scope {
        case .peer: "at most \(subscriptionLimits.perPeer) subscriptions per peer (signal.max_subscriptions_per_peer)"
        case .network: "the network's subscriptions are at their cap (signal.max_subscriptions_per_network)"
        case .server: "the server's subscriptions are at their cap (signal.max_subscriptions)"
        }
        push(WebSocket.encode(.text, SignalSession.error(.subscriptionLimit, limit, ref: ref)), to: p)
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
            registry.all[index].routeFound(target, to: to, from: conn, network: network, message: message, offline: offline, received: received)
        }
    }

    private func routeFound(_ target: SignalEntry?, to: String, from conn: ConnectionID, network: String?, message: [UInt8],
                            offline: [UInt8], received: UInt64) {
        // A peer signals only peers of its own network; one not connected here may be at
        // another instance (the directory forwards it there, or says it is nowhere).
        guard let target, target.network == network, target.location.instance == hub.instance else {
            let result = network.map { hub.forward(message, to: to, network: $0, from: here(conn), offline: offline) } ?? .offline
            switch result {
            case .sent:
                metrics.add(counters.forwarded)
            case .offline:
                if let c = counters.dropped[.peerOffline] { metrics.add(c) }
                if let p = sessions[conn] { push(WebSocket.encode(.text, offline), to: p) }
            case .unavailable(let why):
                if let c = counters.dropped[.unavailable] { metrics.add(c) }
                if let p = sessions[conn] { push(WebSocket.encode(.text, SignalSession.error(.unavailable, why, ref: .string(to))), to: p) }
            }
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
            if d.offline, let c = counters.dropped[.peerOffline] { metrics.add(c) }
            guard let p = sessions[d.conn] else {
                if !d.offline, let c = counters.dropped[.peerOffline] { metrics.add(c) }
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
        // Bounded by count and by bytes, per peer and for the worker: the oldest of this peer's
        // go first; a frame that still does not fit is dropped itself. Counted either way.
        while !p.pending.isEmpty && (p.pending.count >= queueLimit || p.pendingBytes + frame.count > queueBytes
                                     || queuedBytes + frame.count > queueBytesTotal) {
            let old = p.pending.removeFirst()
            p.pendingBytes -= old.count
            queuedBytes -= old.count
            queued -= 1
            metrics.add(counters.queueDropped)
        }
        guard p.pendingBytes + frame.count <= queueBytes, queuedBytes + frame.count <= queueBytesTotal else {
            metrics.add(counters.queueDropped)
            metrics.set(counters.queued, UInt64(queued))
            return
        }
        p.pending.append(frame)
        p.pendingBytes += frame.count
        queuedBytes += frame.count
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
            p.pendingBytes -= frame.count
            queuedBytes -= frame.count
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
            queuedBytes -= p.pendingBytes
            metrics.set(counters.queued, UInt64(queued))
        }
        if p.registered != nil { authenticated -= 1 }
        if !p.watching.isEmpty { hub.unsubscribe(here(conn.id), from: Array(p.watching)) }
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
                // A client that does not read would keep the connection (and its queue) until
                // the idle timeout: one more second to take the close, then it goes.
                p.hardCloseAt = now + 1_000_000_000
            } else if let at = p.hardCloseAt, now >= at {
                p.conn.close(.requestTimeout)
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
