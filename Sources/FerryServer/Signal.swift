import FerryCore
import Synchronization
import DequeModule
import FerrySystem
import FerryWire
import FerrySignal

/// Where every authenticated peer is, and who watches whom: what the workers share. The seam for
/// signaling across several ferryd: a Redis-backed directory implements the same calls (with
/// entries that name another instance), and the router above it does not change.
protocol SignalDirectory: Sendable {
    /// Registers `peer`; returns the entry it replaced, if any.
    func register(_ peer: String, _ e: SignalHub.Entry) -> SignalHub.Entry?
    /// Removes `peer` if it is still this connection's; true when it was.
    func unregister(_ peer: String, _ e: SignalHub.Entry) -> Bool
    func lookup(_ peer: String) -> SignalHub.Entry?
    var count: Int { get }
    /// Subscribes and returns which of `peers` are online in `network` now.
    func subscribe(_ w: SignalHub.Watcher, network: String, to peers: [String]) -> [String]
    func unsubscribe(_ w: SignalHub.Watcher, from peers: [String])
    func watchers(of peer: String, network: String) -> [SignalHub.Watcher]
}

/// The in-process directory: a lock, touched on registration, on lookup of a message's
/// recipient and on presence changes; never on the packet path.
final class SignalHub: SignalDirectory {
    struct Entry: Sendable, Equatable {
        let worker: Int
        let conn: ConnectionID
        let network: String
    }

    struct Watcher: Hashable, Sendable {
        let worker: Int
        let conn: ConnectionID
    }

    private struct State {
        var peers: [String: Entry] = [:]
        /// Watched key → who watches it (with the watcher's network).
        var watchers: [String: [Watcher: String]] = [:]
    }

    private let state = Mutex(State())

    /// Registers `peer`; returns the entry it replaced, if any.
    func register(_ peer: String, _ e: Entry) -> Entry? {
        state.withLock { s in
            let old = s.peers[peer]
            s.peers[peer] = e
            return old
        }
    }

    /// Removes `peer` if it is still this connection's.
    func unregister(_ peer: String, _ e: Entry) -> Bool {
        state.withLock { s in
            guard s.peers[peer] == e else { return false }
            s.peers[peer] = nil
            return true
        }
    }

    func lookup(_ peer: String) -> Entry? { state.withLock { $0.peers[peer] } }

    var count: Int { state.withLock { $0.peers.count } }

    /// Subscribes and returns which of `peers` are online in `network` now.
    func subscribe(_ w: Watcher, network: String, to peers: [String]) -> [String] {
        state.withLock { s in
            var online: [String] = []
            for p in peers {
                s.watchers[p, default: [:]][w] = network
                if s.peers[p]?.network == network { online.append(p) }
            }
            return online
        }
    }

    func unsubscribe(_ w: Watcher, from peers: [String]) {
        state.withLock { s in
            for p in peers {
                s.watchers[p]?[w] = nil
                if s.watchers[p]?.isEmpty == true { s.watchers[p] = nil }
            }
        }
    }

    /// Who in `network` watches `peer`.
    func watchers(of peer: String, network: String) -> [Watcher] {
        state.withLock { s in (s.watchers[peer] ?? [:]).filter { $0.value == network }.map(\.key) }
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
struct SignalCounters {
    let registrations: CounterID
    let connected: CounterID
    let authFailures: [SignalErrorCode: CounterID]
    let routed: CounterID
    let dropped: [SignalErrorCode: CounterID]
    let queueDropped: CounterID
    let latency: HistogramID
    let queued: CounterID
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
/// object. Connection ids are not reused while the worker lives (they count up from 2^20 to
/// 2^31 before wrapping, skipping live ones).
final class SignalWorker {
    final class Peer {
        let session: SignalSession
        let conn: StreamConnection
        /// Frames waiting for the connection; bounded by `queueLimit`, oldest dropped first.
        var pending = Deque<[UInt8]>()
        var watching: [String] = []
        var registered: (peer: String, network: String)?
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
         queueLimit: Int, authTimeoutSeconds: Int, registry: SignalWorkers, loops: [EventLoop]) {
        self.index = index
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
                let online = hub.subscribe(.init(worker: index, conn: conn.id), network: network, to: keys)
                p.watching += keys.filter { !p.watching.contains($0) }
                for k in online { push(WebSocket.encode(.text, SignalSession.presence(k, online: true)), to: p) }
            case .unsubscribe(let keys):
                hub.unsubscribe(.init(worker: index, conn: conn.id), from: keys)
                p.watching.removeAll { keys.contains($0) }
            case .dropped(let code):
                if [.authFailed, .badProof, .tokenExpired, .wrongNetwork].contains(code), p.session.peer == nil {
                    metrics.add(counters.authFailures[code]!)
                } else if let c = counters.dropped[code] {
                    metrics.add(c)
                }
            case .close(let code, let reason):
                push(WebSocket.close(code, reason: reason), to: p)
                conn.closeAfterFlush()
            }
        }
    }

    private func register(_ p: Peer, peer: String, network: String, welcome: [UInt8]) {
        let entry = SignalHub.Entry(worker: index, conn: p.conn.id, network: network)
        if let old = hub.register(peer, entry), old != entry {
            // A second connection with the same key replaces the first, which is told why.
            let frame = WebSocket.encode(.text, SignalSession.error(.replaced, "a newer connection authenticated with this key"))
                + WebSocket.close(.replaced, reason: "replaced")
            deliver(SignalDelivery(conn: old.conn, frame: frame, received: 0, closeAfter: true), toWorker: old.worker)
        }
        metrics.add(counters.registrations)
        p.registered = (peer, network)
        authenticated += 1
        metrics.set(counters.connected, UInt64(authenticated))
        push(WebSocket.encode(.text, welcome), to: p)
        announce(peer, network: network, online: true)
    }

    private func announce(_ peer: String, network: String, online: Bool) {
        let frame = WebSocket.encode(.text, SignalSession.presence(peer, online: online))
        for w in hub.watchers(of: peer, network: network) {
            deliver(SignalDelivery(conn: w.conn, frame: frame, received: 0, closeAfter: false), toWorker: w.worker)
        }
    }

    private func route(from p: Peer, to: String, message: [UInt8], offline: [UInt8], received: UInt64) {
        // A peer signals only peers of its own network.
        guard let target = hub.lookup(to), target.network == p.session.network else {
            if let c = counters.dropped[.peerOffline] { metrics.add(c) }
            push(WebSocket.encode(.text, offline), to: p)
            return
        }
        metrics.add(counters.routed)
        deliver(SignalDelivery(conn: target.conn, frame: WebSocket.encode(.text, message), received: received, closeAfter: false),
                toWorker: target.worker)
    }

    private func deliver(_ d: SignalDelivery, toWorker w: Int) {
        if w == index { receive([d]) } else { outbox[w, default: []].append(d) }
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
        if !p.watching.isEmpty { hub.unsubscribe(.init(worker: index, conn: conn.id), from: p.watching) }
        if let (peer, network) = p.registered, hub.unregister(peer, .init(worker: index, conn: conn.id, network: network)) {
            announce(peer, network: network, online: false)
        }
        p.session.closed()
        metrics.set(counters.connected, UInt64(max(0, authenticated)))
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

    private func send(_ json: [UInt8], to conn: StreamConnection) {
        guard let p = sessions[conn.id] else { return }
        push(WebSocket.encode(.text, json), to: p)
    }
}
