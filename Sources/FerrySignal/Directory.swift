import FerryCore

/// Where a signaling connection lives: which ferryd instance, which worker there, which
/// connection on that worker. An entry from another instance is reached through that instance
/// (signaling across several ferryd); this process only delivers to its own.
public struct SignalLocation: Hashable, Sendable {
    /// The ferryd instance holding the connection (`SignalDirectory.instance` of its directory).
    public let instance: String
    public let worker: Int
    public let connection: ConnectionID

    public init(instance: String, worker: Int, connection: ConnectionID) {
        self.instance = instance
        self.worker = worker
        self.connection = connection
    }
}

/// A registered peer: where it is connected and in which network.
public struct SignalEntry: Equatable, Sendable {
    public let location: SignalLocation
    public let network: String

    public init(location: SignalLocation, network: String) {
        self.location = location
        self.network = network
    }
}

/// The directory of signaling peers: who is connected where, and who watches whom. The workers
/// share it; it is the seam for signaling across several ferryd (`NATSDirectory` keeps this
/// instance's peers in-process and reaches the others over NATS).
///
/// Every answer comes back through `reply`, which the directory must call on the thread of the
/// worker that asked: the directories here answer from what this process knows, at once (the
/// caller is on that thread); what other instances say arrives later through the worker's
/// mailbox, as deliveries. So no worker ever
/// waits on the directory, and a worker handles a reply like any other event.
public protocol SignalDirectory: AnyObject, Sendable {
    /// This ferryd's instance id: the `instance` of the locations it registers.
    var instance: String { get }
    /// Registers `peer` at `entry`; replies with the entry it replaced, if any (that connection
    /// is told it was replaced).
    func register(_ peer: String, _ entry: SignalEntry, reply: @escaping @Sendable (SignalEntry?) -> Void)
    /// Removes `peer` if it is still `entry`'s; replies true when it was (the peer went offline).
    func unregister(_ peer: String, _ entry: SignalEntry, reply: @escaping @Sendable (Bool) -> Void)
    func lookup(_ peer: String, reply: @escaping @Sendable (SignalEntry?) -> Void)
    /// Subscribes `watcher` to `peers`' presence (keys it does not watch yet); replies with those
    /// online in `network` now, or refuses the whole request when it would take the network or
    /// the directory past its cap (nothing of it is stored then).
    func subscribe(_ watcher: SignalLocation, network: String, to peers: [String], reply: @escaping @Sendable (SubscribeResult) -> Void)
    func unsubscribe(_ watcher: SignalLocation, from peers: [String])
    /// Who in `network` watches `peer`.
    func watchers(of peer: String, network: String, reply: @escaping @Sendable ([SignalLocation]) -> Void)
    /// Registered peers (all instances, as far as this directory knows): a gauge, read at scrape time.
    var count: Int { get }
    /// Subscriptions held (watcher × key): a gauge, read at scrape time.
    var subscriptionCount: Int { get }
    /// Whether `peer` may authenticate again at `now` (monotonic ns): a key reconnecting in a
    /// loop would make every watcher of it get online/offline each time. Checked before
    /// `register`; each directory limits what it sees.
    func admitRegistration(_ peer: String, now: UInt64) -> Bool
    /// `peer` is not connected to this instance (in `network`): hand `message` to the instance
    /// that holds it. An in-process directory answers `.offline`; one spanning instances sends it
    /// and, when nobody holds the peer, later delivers `offline` to `from` (a `SignalDelivery`
    /// with `offline` set), so the sender hears `peer_offline` either way.
    func forward(_ message: [UInt8], to peer: String, network: String, from: SignalLocation, offline: [UInt8]) -> ForwardResult
}

/// What became of a message for a peer not connected to this instance.
public enum ForwardResult: Sendable, Equatable {
    /// Connected nowhere (as far as this directory can tell at once): answer `peer_offline` now.
    case offline
    /// Sent on to the other instances.
    case sent
    /// The other instances cannot be reached now (the reason, for the error and the counter).
    case unavailable(String)
}

/// The caps on presence subscriptions (docs/signaling.md, "Limits"): per peer (checked by the
/// peer's worker), per network and in all (checked by the directory, which sees every worker).
public struct SubscriptionLimits: Sendable, Equatable {
    public var perPeer: Int
    public var perNetwork: Int
    public var total: Int

    public init(perPeer: Int, perNetwork: Int, total: Int) {
        self.perPeer = perPeer
        self.perNetwork = perNetwork
        self.total = total
    }

    /// Which cap refused a subscribe (the `limit` label of the refusal counter).
    public enum Scope: String, Sendable, CaseIterable { case peer, network, server }
}

public enum SubscribeResult: Sendable, Equatable {
    case subscribed(online: [String])
    case refused(SubscriptionLimits.Scope)
}
