import FerryCore
import FerryWire

/// Which TURN server `ferry tunnel` allocates on, in what order, and when it gives up on one:
/// every relay host that speaks UDP is measured first (one STUN Binding each, answers awaited
/// `rankingWindow`), then the URLs are tried in `RelayOrder` (UDP, then TCP, then TLS; nearer
/// first), each given `attemptTimeout` for its allocation. Pure: the caller sends the
/// measurements, connects and allocates, and reports back; the clock is handed in.
public struct RelaySelection: Sendable {
    public enum Action: Equatable, Sendable {
        /// Send a STUN Binding with this transaction id to the relay host at this address.
        case measure(TransactionID, SocketAddress)
        /// Connect (TCP, TLS) or allocate (UDP) on this one.
        case attempt(ServerURL)
        /// None left: direct paths only.
        case exhausted
    }

    public static let rankingWindow: UInt64 = 300_000_000
    public static let attemptTimeout: UInt64 = 3_000_000_000

    public private(set) var urls: [ServerURL]
    /// The URL being tried, and when it is given up (nil: connecting, or allocated).
    public private(set) var current: ServerURL?
    private var deadline: UInt64?
    private var next = 0
    private var ranking: [TransactionID: (host: String, address: SocketAddress, sent: UInt64)] = [:]
    private var rankingUntil: UInt64?
    /// Round trips measured by host, in nanoseconds.
    public private(set) var roundTrips: [String: UInt64] = [:]

    public init(urls: [ServerURL] = []) { self.urls = urls }

    public var isRanking: Bool { rankingUntil != nil }

    /// Starts over with `urls`; `resolve` gives a host's IPv4 address (nil: skipped).
    public mutating func start(_ urls: [ServerURL], now: UInt64, resolve: (ServerURL) -> SocketAddress?) -> [Action] {
        self.urls = urls
        current = nil
        deadline = nil
        next = 0
        ranking = [:]
        roundTrips = [:]
        rankingUntil = nil
        var seen: Set<SocketAddress> = []
        var actions: [Action] = []
        for u in urls where u.transport == .udp {
            guard let address = resolve(u), seen.insert(address).inserted else { continue }
            let tid = TransactionID.random()
            ranking[tid] = (u.host, address, now)
            actions.append(.measure(tid, address))
        }
        // One host: nothing to rank it against.
        guard ranking.count > 1 else {
            ranking = [:]
            self.urls = RelayOrder.order(urls, roundTrips: [:])
            return actions + [attemptNext(now: now)]
        }
        rankingUntil = now + RelaySelection.rankingWindow
        return actions
    }

    /// A STUN answer on the ICE socket: true when it answered a measurement (and is used up).
    public mutating func answer(_ m: STUNMessage, from: SocketAddress, now: UInt64) -> Bool {
        guard let r = ranking[m.transactionID], r.address == from, STUNBinding.mappedAddress(m, tid: m.transactionID) != nil else { return false }
        ranking[m.transactionID] = nil
        roundTrips[r.host] = now - r.sent
        return true
    }

    /// The ranking window closing, or the attempt's deadline passing.
    public mutating func tick(now: UInt64) -> [Action] {
        if let until = rankingUntil, now >= until {
            rankingUntil = nil
            ranking = [:]
            urls = RelayOrder.order(urls, roundTrips: roundTrips)
            return [attemptNext(now: now)]
        }
        if let d = deadline, now > d {
            return [attemptNext(now: now)]
        }
        return []
    }

    /// The current attempt failed (unreachable, refused, no credentials for it).
    public mutating func failed(now: UInt64) -> Action { attemptNext(now: now) }

    /// The stream is connected: its allocation gets `attemptTimeout` from now.
    public mutating func connected(now: UInt64) { deadline = now + RelaySelection.attemptTimeout }

    /// The allocation succeeded: no deadline.
    public mutating func allocated() { deadline = nil }

    private mutating func attemptNext(now: UInt64) -> Action {
        guard next < urls.count else {
            current = nil
            deadline = nil
            return .exhausted
        }
        let u = urls[next]
        next += 1
        current = u
        deadline = u.transport == .udp ? now + RelaySelection.attemptTimeout : nil
        return .attempt(u)
    }
}
