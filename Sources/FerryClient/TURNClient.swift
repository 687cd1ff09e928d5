import FerryCore
import FerryWire

/// The client side of one TURN allocation (RFC 8656), as a pure state machine: the caller hands
/// it the bytes that arrived and the time, and sends the bytes it returns; it never touches a
/// socket or a clock. The same machine serves UDP (with RFC 8489 retransmissions) and TCP/TLS
/// (`reliable`: no retransmissions, one timeout).
///
/// It handles the 401 challenge (REALM and NONCE, then long-term credentials), 438 stale nonces
/// (once per transaction), refreshes the allocation before it expires, and keeps the permissions
/// and channels the caller asked for alive (permissions every 4 minutes of their 5, channels every
/// 9 of their 10). Requests and responses are control traffic: arrays are fine here. The data
/// path (ChannelData) is framed by the caller in its own buffers with `channel(for:)`.
public struct TURNClient {
    public struct Credentials: Sendable, Equatable {
        public var username: String
        public var password: String
        public init(username: String, password: String) {
            self.username = username
            self.password = password
        }

        /// coturn's shared-secret ("TURN REST") credentials: `expiry:label`, base64(HMAC-SHA1).
        public static func rest(secret: String, label: String, expiry: UInt64) -> Credentials {
            let user = "\(expiry):\(label)"
            return Credentials(username: user, password: Crypto.restPassword(secret: secret, username: user))
        }
    }

    public enum Request: Equatable, Sendable {
        case allocate, refresh(lifetime: UInt32), createPermission([IPAddress]), channelBind(UInt16, SocketAddress)
    }

    public enum Event: Equatable, Sendable {
        case allocated(relayed: SocketAddress, mapped: SocketAddress?, lifetime: UInt32)
        case refreshed(lifetime: UInt32)
        case permitted([IPAddress])
        case channelBound(UInt16, SocketAddress)
        /// A request failed for good: the error response (code and reason), or a timeout (code 0).
        case failed(Request, code: Int, reason: String)
        case deallocated
    }

    public enum Phase: Equatable, Sendable { case idle, allocating, allocated, failed, closed }

    struct Pending {
        var request: Request
        var bytes: [UInt8]
        var sentAt: UInt64
        var nextSend: UInt64
        var attempts: Int
        var authenticated: Bool
        var retriedNonce: Bool
    }

    public let credentials: Credentials
    public let reliable: Bool
    public let software: String?
    public private(set) var phase = Phase.idle
    public private(set) var relayed: SocketAddress?
    public private(set) var mapped: SocketAddress?
    public private(set) var realm: String?
    private var nonce: String?
    private var key: [UInt8] = []
    private var pending: [TransactionID: Pending] = [:]
    private var expiry: UInt64 = 0
    private var requestedLifetime: UInt32 = 600
    /// Permissions and channels the caller wants kept, with when each needs its next refresh.
    public private(set) var permissions: [IPAddress: UInt64] = [:]
    public private(set) var channels: [SocketAddress: (number: UInt16, refreshAt: UInt64)] = [:]
    private var nextChannel: UInt16 = 0x4000

    /// RFC 8489 §6.2.1: RTO 500 ms doubling, Rc = 7 sends, the last awaited for Rm = 16 RTOs.
    public static let initialRTO: UInt64 = 500_000_000
    public static let maxSends = 7
    /// Over TCP/TLS: one send, 39.5 s to answer (the same total as UDP's schedule).
    public static let reliableTimeout: UInt64 = 39_500_000_000
    static let permissionRefresh: UInt64 = 240_000_000_000
    static let channelRefresh: UInt64 = 540_000_000_000

    public init(credentials: Credentials, reliable: Bool, software: String? = "ferry") {
        self.credentials = credentials
        self.reliable = reliable
        self.software = software
    }

    // MARK: Requests

    /// The first Allocate (without credentials; the 401 brings realm and nonce).
    public mutating func allocate(lifetime: UInt32 = 600, now: UInt64) -> [UInt8] {
        requestedLifetime = lifetime
        phase = .allocating
        return start(.allocate, now: now)
    }

    /// Permissions for `ips`, kept alive until `forget`.
    public mutating func permit(_ ips: [IPAddress], now: UInt64) -> [UInt8] {
        for ip in ips { permissions[ip] = now + Self.permissionRefresh }
        return start(.createPermission(ips), now: now)
    }

    /// A channel to `peer` (which also installs its permission), kept alive until `forget`;
    /// the number is the existing one when the peer already has a channel.
    public mutating func bindChannel(to peer: SocketAddress, now: UInt64) -> (number: UInt16, request: [UInt8]) {
        let number: UInt16
        if let c = channels[peer] {
            number = c.number
        } else {
            number = nextChannel
            nextChannel = nextChannel == ChannelData.maxChannel ? ChannelData.minChannel : nextChannel + 1
        }
        channels[peer] = (number, now + Self.channelRefresh)
        return (number, start(.channelBind(number, peer), now: now))
    }

    /// Stops refreshing `ip`'s permission and its channels (they lapse on the server).
    public mutating func forget(_ ip: IPAddress) {
        permissions[ip] = nil
        for (peer, _) in channels where peer.ip == ip { channels[peer] = nil }
    }

    /// Refresh with lifetime 0: ends the allocation (RFC 8656 §7.2).
    public mutating func deallocate(now: UInt64) -> [UInt8]? {
        guard phase == .allocated else { return nil }
        return start(.refresh(lifetime: 0), now: now)
    }

    public func channel(for peer: SocketAddress) -> UInt16? { channels[peer]?.number }

    public func peer(forChannel number: UInt16) -> SocketAddress? {
        channels.first { $0.value.number == number }?.key
    }

    /// A Send indication carrying `data` to `peer` (control path: checks before a channel exists).
    public func sendIndication(to peer: SocketAddress, data: [UInt8]) -> [UInt8] {
        STUNWriter.build(method: STUN.Method.send, class: .indication, capacity: 64 + data.count) { w in
            w.append(STUN.Attribute.xorPeerAddress, xorAddress: peer)
            data.withUnsafeBytes { w.append(STUN.Attribute.data, bytes: $0) }
            w.appendFingerprint()
        }
    }

    private mutating func start(_ request: Request, now: UInt64) -> [UInt8] {
        let tid = TransactionID.random()
        let authenticated = realm != nil
        let bytes = encode(request, tid: tid, authenticated: authenticated)
        pending[tid] = Pending(request: request, bytes: bytes, sentAt: now, nextSend: now + firstWait,
                               attempts: 1, authenticated: authenticated, retriedNonce: false)
        return bytes
    }

    private var firstWait: UInt64 { reliable ? Self.reliableTimeout : Self.initialRTO }

    private func encode(_ request: Request, tid: TransactionID, authenticated: Bool) -> [UInt8] {
        let method: UInt16
        switch request {
        case .allocate: method = STUN.Method.allocate
        case .refresh: method = STUN.Method.refresh
        case .createPermission: method = STUN.Method.createPermission
        case .channelBind: method = STUN.Method.channelBind
        }
        return STUNWriter.build(method: method, class: .request, transactionID: tid) { w in
            switch request {
            case .allocate:
                w.append(STUN.Attribute.requestedTransport, uint32: 17 << 24)
                w.append(STUN.Attribute.lifetime, uint32: requestedLifetime)
            case .refresh(let lifetime):
                w.append(STUN.Attribute.lifetime, uint32: lifetime)
            case .createPermission(let ips):
                for ip in ips { w.append(STUN.Attribute.xorPeerAddress, xorAddress: SocketAddress(ip: ip, port: 0)) }
            case .channelBind(let number, let peer):
                w.append(STUN.Attribute.channelNumber, uint32: UInt32(number) << 16)
                w.append(STUN.Attribute.xorPeerAddress, xorAddress: peer)
            }
            if let software { w.append(STUN.Attribute.software, string: software) }
            if authenticated, let realm, let nonce {
                w.append(STUN.Attribute.username, string: credentials.username)
                w.append(STUN.Attribute.realm, string: realm)
                w.append(STUN.Attribute.nonce, string: nonce)
                key.withUnsafeBytes { w.appendMessageIntegrity(key: $0) }
            }
            w.appendFingerprint()
        }
    }

    // MARK: Responses and time

    /// One STUN message from the server. Returns what happened and what to send now. Messages
    /// that are not answers to our requests (Data indications, strays) are left to the caller.
    public mutating func receive(_ message: STUNMessage, now: UInt64) -> (events: [Event], send: [[UInt8]]) {
        guard message.messageClass == .success || message.messageClass == .error,
              var p = pending[message.transactionID] else { return ([], []) }
        // An authenticated request's answer must carry our MESSAGE-INTEGRITY (else it is forged
        // or from someone else: an on-path attacker who saw the transaction id could inject a 437
        // to a Refresh and make us drop the relay); 401s and 438s carry none by design (401 ends
        // the request, 438 restarts it once). An unsigned answer is ignored: the request stays
        // pending, so the server's real answer still counts.
        if p.authenticated {
            let code = message.messageClass == .error ? message.errorCode()?.code : nil
            if code != 401 && code != 438 {
                guard key.withUnsafeBytes({ message.verifyIntegrity(key: $0) }) else { return ([], []) }
            }
        }
        pending[message.transactionID] = nil
        if message.messageClass == .error {
            let (code, reason) = message.errorCode() ?? (0, "error response without ERROR-CODE")
            if code == 401, !p.authenticated, let r = message.string(STUN.Attribute.realm), let n = message.string(STUN.Attribute.nonce) {
                realm = r
                nonce = n
                key = Crypto.md5(Array("\(credentials.username):\(r):\(credentials.password)".utf8))
                return ([], [restart(&p, now: now)])
            }
            if code == 438, !p.retriedNonce, let n = message.string(STUN.Attribute.nonce) {
                nonce = n
                p.retriedNonce = true
                return ([], [restart(&p, now: now)])
            }
            return ([fail(p.request, code: code, reason: reason)], [])
        }
        return ([succeed(p.request, message, now: now)], [])
    }

    private mutating func restart(_ p: inout Pending, now: UInt64) -> [UInt8] {
        let tid = TransactionID.random()
        p.authenticated = true
        p.bytes = encode(p.request, tid: tid, authenticated: true)
        p.sentAt = now
        p.nextSend = now + firstWait
        p.attempts = 1
        pending[tid] = p
        return p.bytes
    }

    private mutating func fail(_ request: Request, code: Int, reason: String) -> Event {
        switch request {
        case .allocate: phase = .failed
        case .refresh(let lifetime) where lifetime > 0:
            // 437: the allocation is gone (server restarted, or it expired).
            if code == 437 { phase = .failed }
        default: break
        }
        return .failed(request, code: code, reason: reason)
    }

    private mutating func succeed(_ request: Request, _ m: STUNMessage, now: UInt64) -> Event {
        switch request {
        case .allocate:
            guard let relay = m.xorAddress(STUN.Attribute.xorRelayedAddress) else {
                phase = .failed
                return .failed(.allocate, code: 0, reason: "success without XOR-RELAYED-ADDRESS")
            }
            let lifetime = m.uint32(STUN.Attribute.lifetime) ?? requestedLifetime
            relayed = relay
            mapped = m.xorAddress(STUN.Attribute.xorMappedAddress)
            expiry = now + UInt64(lifetime) * 1_000_000_000
            phase = .allocated
            return .allocated(relayed: relay, mapped: mapped, lifetime: lifetime)
        case .refresh(let asked):
            let lifetime = m.uint32(STUN.Attribute.lifetime) ?? asked
            if asked == 0 || lifetime == 0 {
                phase = .closed
                return .deallocated
            }
            expiry = now + UInt64(lifetime) * 1_000_000_000
            return .refreshed(lifetime: lifetime)
        case .createPermission(let ips): return .permitted(ips)
        case .channelBind(let n, let peer): return .channelBound(n, peer)
        }
    }

    /// Retransmissions, timeouts and refreshes due at `now`.
    public mutating func tick(now: UInt64) -> (events: [Event], send: [[UInt8]]) {
        var events: [Event] = [], send: [[UInt8]] = []
        for (tid, var p) in pending where p.nextSend <= now {
            if reliable || p.attempts >= Self.maxSends {
                pending[tid] = nil
                events.append(fail(p.request, code: 0, reason: "no answer"))
                continue
            }
            p.attempts += 1
            // 500 ms, then doubling; the last send is awaited 16 RTOs.
            let wait = p.attempts == Self.maxSends ? 16 * Self.initialRTO : Self.initialRTO << UInt64(p.attempts - 1)
            p.nextSend = now + wait
            pending[tid] = p
            send.append(p.bytes)
        }
        guard phase == .allocated else { return (events, send) }
        // Refresh a minute before expiry (or at half the lifetime, if shorter).
        if !pending.values.contains(where: { if case .refresh = $0.request { true } else { false } }) {
            let margin = min(60_000_000_000, (expiry > now ? expiry - now : 0) / 2)
            if expiry <= now + margin || expiry <= now + 60_000_000_000 {
                send.append(start(.refresh(lifetime: requestedLifetime), now: now))
            }
        }
        var due: [IPAddress] = []
        for (ip, at) in permissions where at <= now && !channels.keys.contains(where: { $0.ip == ip }) {
            due.append(ip)
        }
        if !due.isEmpty { send.append(permit(due, now: now)) }
        for (peer, c) in channels where c.refreshAt <= now {
            send.append(bindChannel(to: peer, now: now).request)
            permissions[peer.ip] = now + Self.permissionRefresh
        }
        return (events, send)
    }

    /// The earliest time `tick` has work, for the caller's timer.
    public var nextDeadline: UInt64 {
        var t = UInt64.max
        for p in pending.values { t = min(t, p.nextSend) }
        if phase == .allocated {
            t = min(t, expiry > 60_000_000_000 ? expiry - 60_000_000_000 : 0)
            for at in permissions.values { t = min(t, at) }
            for c in channels.values { t = min(t, c.refreshAt) }
        }
        return t
    }

    public var hasPendingRequests: Bool { !pending.isEmpty }

    /// The transactions awaiting an answer (fuzzing answers them).
    public var pendingTransactionIDs: [TransactionID] { Array(pending.keys) }
}
