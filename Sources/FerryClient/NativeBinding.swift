import FerryCore
import FerryWire

/// A native relay handed out by `welcome`: its URL and address, and this peer's credential.
public struct NativeRelay: Equatable, Sendable {
    public let url: String
    public let address: SocketAddress
    public let token: [UInt8]
    public let key: [UInt8]

    public init(url: String, address: SocketAddress, token: [UInt8], key: [UInt8]) {
        self.url = url
        self.address = address
        self.token = token
        self.key = key
    }
}

/// One peer's end of a native-relay session, as `ferry tunnel` keeps it (docs/relay-protocol.md):
/// bind (answering the challenge), retry an unanswered bind 1 s apart 5 times, refresh a bound
/// end every 60 s, bind again at once when asked (signaling came back: the relay may have
/// restarted), unbind at the end. Pure: the caller sends what it returns from WireGuard's port
/// and keeps the time (monotonic nanoseconds).
public struct NativeBinding: Sendable {
    public enum Action: Equatable, Sendable {
        /// Send these bytes to the relay from WireGuard's port.
        case send([UInt8])
        /// The end is bound (the first time): WireGuard's endpoint may be the relay now.
        case bound(active: Bool, mapped: SocketAddress)
        /// The relay refused, or never answered: stay on (or go back to) TURN.
        case failed(String)
    }

    public static let retry: UInt64 = 1_000_000_000
    public static let attempts = 5
    public static let refresh: UInt64 = 60_000_000_000

    public let relay: NativeRelay
    private var binder: RelayBinder
    private var tid = TransactionID.random()
    private var sentAt: UInt64 = 0
    private var tries = 0
    public private(set) var isBound = false
    private var lastBound: UInt64 = 0
    public private(set) var finished = false

    public init(relay: NativeRelay, partner: [UInt8]) {
        self.relay = relay
        binder = RelayBinder(token: relay.token, key: relay.key, partner: partner)
    }

    /// The first bind.
    public mutating func start(now: UInt64) -> [Action] { [bind(now: now)] }

    private mutating func bind(now: UInt64, lifetime: UInt32? = nil) -> Action {
        tid = TransactionID.random()
        sentAt = now
        tries += 1
        return .send(binder.request(tid, lifetime: lifetime))
    }

    /// A datagram from the relay's address: the answer to the current bind, or nil (not ours,
    /// another transaction, or an unsigned success: not the relay's).
    public mutating func receive(_ bytes: UnsafeRawBufferPointer, now: UInt64) -> [Action]? {
        guard !finished, let answer = binder.answer(bytes, tid: tid) else { return nil }
        switch answer {
        case .challenged:
            // The cookie is kept; asking again is not another attempt.
            tries -= 1
            return [bind(now: now)]
        case .bound(let active, let mapped, _):
            let first = !isBound
            isBound = true
            tries = 0
            lastBound = now
            return first ? [.bound(active: active, mapped: mapped)] : []
        case .refused(let code, let reason):
            finished = true
            return [.failed("the relay refused the bind (\(code) \(reason))")]
        case .unbound:
            return []
        }
    }

    /// Retries and refreshes, about every pace of the caller's loop.
    public mutating func tick(now: UInt64) -> [Action] {
        guard !finished else { return [] }
        if !isBound || now > lastBound + NativeBinding.refresh {
            guard now >= sentAt + NativeBinding.retry else { return [] }
            if tries >= NativeBinding.attempts {
                finished = true
                return [.failed("no answer from the native relay after \(tries) binds")]
            }
            return [bind(now: now)]
        }
        return []
    }

    /// Binds again at once (the relay may have restarted and forgotten the session).
    public mutating func rebind(now: UInt64) -> [Action] {
        guard !finished else { return [] }
        tries = 0
        return [bind(now: now)]
    }

    /// Unbinds (LIFETIME 0), if bound; the binding is finished either way.
    public mutating func end() -> [Action] {
        defer { finished = true }
        guard isBound && !finished else { return [] }
        return [.send(binder.request(TransactionID.random(), lifetime: 0))]
    }
}
