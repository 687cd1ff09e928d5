import FerryCore
import Synchronization
import FerrySignal
import FerryTURN

/// The in-process `SignalDirectory`: a lock, touched on registration, on lookup of a message's
/// recipient and on presence changes; never on the packet path. Replies are immediate: the
/// caller is a worker on its own thread, which is where a reply must run.
final class SignalHub: SignalDirectory {
    let instance: String

    private struct State {
        var peers: [String: SignalEntry] = [:]
        /// Watched key → who watches it (with the watcher's network).
        var watchers: [String: [SignalLocation: String]] = [:]
        /// Subscriptions held, per network and in all (the caps of `limits`).
        var perNetwork: [String: Int] = [:]
        var subscriptions = 0
        /// Authentications per key (`signal.registrations_per_second`, burst), swept each second.
        var registrations: RateLimiter<String>
        var lastSweep: UInt64 = 0
    }

    private let state: Mutex<State>
    let limits: SubscriptionLimits

    init(instance: String, limits: SubscriptionLimits = SubscriptionLimits(perPeer: .max, perNetwork: .max, total: .max),
         registrationsPerSecond: Double = 0, registrationBurst: Double = 1) {
        self.instance = instance
        self.limits = limits
        state = Mutex(State(registrations: RateLimiter(ratePerSecond: registrationsPerSecond, burst: registrationBurst)))
    }

    func admitRegistration(_ peer: String, now: UInt64) -> Bool {
        state.withLock { s in
            if now &- s.lastSweep > 1_000_000_000 {
                s.registrations.sweep(now: now)
                s.lastSweep = now
            }
            return s.registrations.allow(peer, now: now)
        }
    }

    var subscriptionCount: Int { state.withLock { $0.subscriptions } }

    func register(_ peer: String, _ e: SignalEntry, reply: @Sendable (SignalEntry?) -> Void) { reply(registerNow(peer, e)) }
    func unregister(_ peer: String, _ e: SignalEntry, reply: @Sendable (Bool) -> Void) { reply(unregisterNow(peer, e)) }
    func lookup(_ peer: String, reply: @Sendable (SignalEntry?) -> Void) { reply(lookupNow(peer)) }
    func subscribe(_ w: SignalLocation, network: String, to peers: [String], reply: @Sendable (SubscribeResult) -> Void) {
        reply(subscribeNow(w, network: network, to: peers))
    }
    func unsubscribe(_ w: SignalLocation, from peers: [String]) { _ = unsubscribeNow(w, from: peers) }
    func watchers(of peer: String, network: String, reply: @Sendable ([SignalLocation]) -> Void) { reply(watchersNow(of: peer, network: network)) }
    func forward(_ message: [UInt8], to peer: String, network: String, from: SignalLocation, offline: [UInt8]) -> ForwardResult { .offline }

    // The same answers returned, for a directory that keeps its local part here (`NATSDirectory`).

    func registerNow(_ peer: String, _ e: SignalEntry) -> SignalEntry? {
        state.withLock { s in
            let old = s.peers[peer]
            s.peers[peer] = e
            return old
        }
    }

    func unregisterNow(_ peer: String, _ e: SignalEntry) -> Bool {
        state.withLock { s in
            guard s.peers[peer] == e else { return false }
            s.peers[peer] = nil
            return true
        }
    }

    func lookupNow(_ peer: String) -> SignalEntry? { state.withLock { $0.peers[peer] } }

    var count: Int { state.withLock { $0.peers.count } }

    /// Hashing only, per key: the cost of a subscribe is its own size, not what is watched
    /// already. A key the watcher already watches costs nothing and counts once.
    func subscribeNow(_ w: SignalLocation, network: String, to peers: [String]) -> SubscribeResult {
        state.withLock { s -> SubscribeResult in
            let new = peers.filter { s.watchers[$0]?[w] == nil }
            if s.perNetwork[network, default: 0] + new.count > limits.perNetwork { return .refused(.network) }
            if s.subscriptions + new.count > limits.total { return .refused(.server) }
            for p in new { s.watchers[p, default: [:]][w] = network }
            s.perNetwork[network, default: 0] += new.count
            s.subscriptions += new.count
            return .subscribed(online: peers.filter { s.peers[$0]?.network == network })
        }
    }

    /// Removes what `w` watched of `peers`; returns how many per network.
    func unsubscribeNow(_ w: SignalLocation, from peers: [String]) -> [String: Int] {
        state.withLock { s in
            var removed: [String: Int] = [:]
            for p in peers {
                guard let network = s.watchers[p]?.removeValue(forKey: w) else { continue }
                if s.watchers[p]?.isEmpty == true { s.watchers[p] = nil }
                s.subscriptions -= 1
                removed[network, default: 0] += 1
                let left = s.perNetwork[network, default: 1] - 1
                s.perNetwork[network] = left > 0 ? left : nil
            }
            return removed
        }
    }

    func watchersNow(of peer: String, network: String) -> [SignalLocation] {
        state.withLock { s in (s.watchers[peer] ?? [:]).filter { $0.value == network }.map(\.key) }
    }

    /// The keys watched in `network` (a resynchronization after NATS returns asks about them).
    func watchedKeys(network: String) -> [String] {
        state.withLock { s in s.watchers.compactMap { k, w in w.values.contains(network) ? k : nil } }
    }

    /// The peers registered here in `network` (re-announced when NATS returns).
    func localPeers(instance: String) -> [(String, SignalEntry)] {
        state.withLock { s in s.peers.compactMap { $0.value.location.instance == instance ? ($0.key, $0.value) : nil } }
    }
}
