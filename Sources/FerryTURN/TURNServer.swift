import FerryCore
import FerryWire

/// One worker's STUN/TURN server (RFC 8489, RFC 8656): pure protocol logic. It takes a parsed
/// message, the client's address and the time, writes the answer into the caller's buffer and
/// returns what the caller must do; sockets are opened through `RelayProvider`. No syscalls,
/// no clock: `now` is monotonic nanoseconds, `wallNow` Unix seconds (for nonces and REST
/// credential expiry).
///
/// Ownership: one instance per worker, used only on that worker's thread. `shared` is the only
/// state crossing workers (user quotas, EVEN-PORT reservations), behind its own locks.
public final class TURNServer {
    public let settings: TURNSettings
    public private(set) var credentials: CredentialStore
    public private(set) var policy: PeerPolicy
    let nonces: NonceCodec
    unowned let relays: RelayProvider
    let shared: TURNShared
    /// `shared.relayPorts`, hoisted so the relay path reads it without touching `shared`.
    public let relayPorts: RelayPortSet
    let counters: TURNCounters
    let metrics: CounterBlock
    /// The slabs, behind a pointer: the relay path reads them without exclusivity checks.
    public let table: UnsafeMutablePointer<AllocationTable>
    var unauthorized: RateLimiter<IPAddress>
    /// Called when an allocation ends, with its last state and why (the session log). Set once
    /// by the owner before traffic; runs on this worker's thread.
    public var onEnd: ((AllocationRecord, AllocationRecord.End) -> Void)?
    /// The kernel fast path (TURNFastPath): when `mirrorsFastPath`, allocations whose forwardable
    /// channels may have changed are listed here for the next sync, and `willEnd` runs before an
    /// allocation ends (its kernel counts join it). Set once by the owner before traffic.
    public var mirrorsFastPath = false
    public var fastPathDirty: [Int32] = []
    public var willEnd: ((Int32) -> Void)?

    @inline(__always) func markFastPath(_ slot: Int32) {
        if mirrorsFastPath { fastPathDirty.append(slot) }
    }

    public init(settings: TURNSettings, credentials: CredentialStore, nonces: NonceCodec, policy: PeerPolicy,
                relays: RelayProvider, shared: TURNShared, counters: TURNCounters, metrics: CounterBlock) {
        self.settings = settings
        self.credentials = credentials
        self.nonces = nonces
        self.policy = policy
        self.relays = relays
        self.shared = shared
        relayPorts = shared.relayPorts
        self.counters = counters
        self.metrics = metrics
        table = .allocate(capacity: 1)
        table.initialize(to: AllocationTable(capacity: settings.maxAllocations,
                                             permissionsPer: settings.maxPermissionsPerAllocation,
                                             channelsPer: settings.maxChannelsPerAllocation))
        unauthorized = RateLimiter(ratePerSecond: settings.unauthorizedPerSecond, burst: settings.unauthorizedBurst)
    }

    deinit {
        table.pointee.release()
        table.deinitialize(count: 1)
        table.deallocate()
    }

    /// Reload: new users, secrets and peer policy apply to new requests at once, and to what is
    /// installed: a permission or channel for a peer the new policy denies lapses now (nothing
    /// more is relayed to or from it), and bound channels' next packet sees whether their peer
    /// is limited to live ports.
    public func update(credentials: CredentialStore, policy: PeerPolicy) {
        self.credentials = credentials
        self.policy = policy
        let t = table
        for i in 0..<t.pointee.usedSlots where t.pointee.allocations[i].active {
            let permissions = t.pointee.permissionBase(Int32(i))
            for p in 0..<Int(t.pointee.allocations[i].permissionCount) where !policy.permitsPermission(permissions[p].ip) {
                permissions[p].expiry = 0
            }
            let base = t.pointee.channelBase(Int32(i))
            for c in 0..<Int(t.pointee.allocations[i].channelCount) {
                base[c].liveOnly = policy.limitsToLivePorts(base[c].peer.ip)
                if !policy.permitsPermission(base[c].peer.ip) { base[c].expiry = 0 }
            }
            markFastPath(Int32(i))
        }
    }

    public var activeAllocations: Int { table.pointee.activeCount }

    /// What the caller does after `handle`.
    public enum Action {
        case none
        /// Send the `length` bytes written to `out` back to the client.
        case reply(length: Int)
        /// A Send indication's DATA (a slice of the request) goes to `peer` via relay `handle`.
        case relay(RelayID, peer: SocketAddress, payload: UnsafeRawBufferPointer)
    }

    /// Handles one STUN message from `client` (its address and the transport it came in on).
    public func handle(_ msg: STUNMessage, from client: ClientKey, now: UInt64, wallNow: UInt64,
                       out: UnsafeMutableRawBufferPointer) -> Action {
        switch msg.messageClass {
        case .request:
            return request(msg, from: client, now: now, wallNow: wallNow, out: out)
        case .indication:
            if msg.method == STUN.Method.send { return sendIndication(msg, client: client, now: now) }
            return .none
        case .success, .error:
            return .none  // a server ignores responses (RFC 8489 §6.3.3)
        }
    }

    // MARK: Requests

    struct Context {
        let msg: STUNMessage
        let clientKey: ClientKey
        var client: SocketAddress { clientKey.address }
        let now: UInt64
        let wallNow: UInt64
        let out: UnsafeMutableRawBufferPointer
        var key: [UInt8] = []
        var sha256 = false
        var username = ""
        var methodIndex: Int
    }

    func request(_ msg: STUNMessage, from client: ClientKey, now: UInt64, wallNow: UInt64,
                         out: UnsafeMutableRawBufferPointer) -> Action {
        let methodIndex = TURNCounters.methods.firstIndex(of: msg.method) ?? -1
        var ctx = Context(msg: msg, clientKey: client, now: now, wallNow: wallNow, out: out, methodIndex: methodIndex)
        guard methodIndex >= 0 else {
            return error(ctx, 400, reason: "Unknown method", signed: false)
        }
        // RFC 8489 §6.3.1: unknown comprehension-required attributes → 420.
        let unknown = msg.unknownComprehensionRequired()
        if !unknown.isEmpty {
            return error(ctx, 420, signed: false) { $0.appendUnknownAttributes(unknown) }
        }
        if msg.method == STUN.Method.binding { return binding(ctx) }
        if let failure = authenticate(&ctx) { return failure }
        switch msg.method {
        case STUN.Method.allocate: return allocate(ctx)
        case STUN.Method.refresh: return refresh(ctx)
        case STUN.Method.createPermission: return createPermission(ctx)
        default: return channelBind(ctx)
        }
    }

    /// RFC 8489 §7.3.1: a Binding request is answered with the source address, no credentials.
    func binding(_ ctx: Context) -> Action {
        success(ctx, signed: false) { w in w.append(STUN.Attribute.xorMappedAddress, xorAddress: ctx.client) }
    }

    // MARK: Authentication (RFC 8489 §9.2.4)

    func authenticate(_ ctx: inout Context) -> Action? {
        let msg = ctx.msg
        let ipBytes = ctx.client.ip.bytes
        // "If the message does not contain a MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256
        // attribute, the server MUST generate an error response with an error code of 401."
        guard msg.integrityOffset >= 0 || msg.integritySHA256Offset >= 0 else {
            return challenge(ctx, 401, .missingIntegrity, ipBytes)
        }
        // "If the message contains a MESSAGE-INTEGRITY ... but is missing USERNAME or USERHASH,
        // REALM, or NONCE, the server MUST generate an error response with an error code of 400."
        guard let username = msg.string(STUN.Attribute.username), let realm = msg.string(STUN.Attribute.realm),
              let nonce = msg.string(STUN.Attribute.nonce) else {
            metrics.add(counters.authFailures[.badRequest])
            return error(ctx, 400, reason: "Missing USERNAME, REALM or NONCE", signed: false)
        }
        // "If the NONCE is no longer valid, the server MUST generate an error response with an
        // error code of 438 (Stale Nonce)."
        if nonces.check(nonce, clientIP: ipBytes, now: ctx.wallNow) != .valid {
            return challenge(ctx, 438, .staleNonce, ipBytes)
        }
        guard realm == credentials.realm else { return challenge(ctx, 401, .wrongRealm, ipBytes) }
        // "If the username ... is not valid, the server MUST generate an error response with an
        // error code of 401."
        let keys: [[UInt8]]
        switch credentials.keys(for: username, now: ctx.wallNow) {
        case .unknown: return challenge(ctx, 401, .unknownUser, ipBytes)
        case .expired: return challenge(ctx, 401, .expired, ipBytes)
        case .keys(let k): keys = k
        }
        // "Using the password associated with the username ..., compute the value for the
        // message integrity ... If the resulting value does not match ..., 401."
        let sha256 = msg.integritySHA256Offset >= 0
        guard let key = keys.first(where: { k in
            k.withUnsafeBytes { sha256 ? msg.verifyIntegritySHA256(key: $0) : msg.verifyIntegrity(key: $0) }
        }) else {
            return challenge(ctx, 401, .badIntegrity, ipBytes)
        }
        ctx.key = key
        ctx.sha256 = sha256
        ctx.username = username
        return nil
    }

    /// A 401/438 with REALM and a fresh NONCE, unsigned. Rate-limited per source IP so the
    /// server cannot be used to reflect traffic at a spoofed address: over the limit, dropped.
    func challenge(_ ctx: Context, _ code: Int, _ why: TURNCounters.AuthFailure, _ ip: [UInt8]) -> Action {
        metrics.add(counters.authFailures[why])
        guard allowUnauthenticatedAnswer(ctx) else { return .none }
        let nonce = nonces.make(for: ip, now: ctx.wallNow)
        let realm = credentials.realm
        return error(ctx, code, signed: false, limited: false) { w in
            w.append(STUN.Attribute.realm, string: realm)
            w.append(STUN.Attribute.nonce, string: nonce)
        }
    }

    // MARK: Expiry

    /// The once-a-second sweep: expired allocations go (with their relays), and so do
    /// reservations nobody redeemed. Permissions and channels expire in place (their slots are
    /// reused) — lookups already compare expiry times.
    public func sweep(now: UInt64) {
        let t = table
        for i in 0..<t.pointee.usedSlots {
            let a = t.pointee.allocations + i
            if a.pointee.active && a.pointee.expiry <= now {
                delete(Int32(i), .expired, now: now)
                metrics.add(counters.allocationsExpired)
            }
        }
        for r in shared.expiredReservations(now: now) { relays.closeReserved(r.socket) }
        unauthorized.sweep(now: now)
    }

    /// The client's transport connection closed (TURN over TCP/TLS): its allocation goes with it
    /// (RFC 8656 §3.1: "the allocation is deleted when the connection closes").
    public func clientGone(_ key: ClientKey, now: UInt64) {
        guard let slot = table.pointee.byClient[key] else { return }
        delete(slot, .connectionClosed, now: now)
        metrics.add(counters.allocationsDeleted)
    }

    /// Every allocation goes (shutdown).
    public func closeAll(now: UInt64) {
        for i in 0..<table.pointee.usedSlots where table.pointee.allocations[i].active { delete(Int32(i), .shutdown, now: now) }
    }

    // MARK: Answers

    /// A success response, signed with the request's key when authenticated, FINGERPRINT when
    /// the request had one (RFC 8489 §7.3.1.1, §9.2.4).
    func success(_ ctx: Context, signed: Bool = true, _ body: (inout STUNWriter) -> Void) -> Action {
        finish(ctx, cls: .success, resultIndex: 0, signed: signed, body)
    }

    /// Every error answer to a request that did not authenticate (400, 420, 401, 438) shares the
    /// per-source limit: such answers are larger than the requests that cause them, so without
    /// the limit a spoofed source could use the server to reflect traffic. Over it: dropped.
    func allowUnauthenticatedAnswer(_ ctx: Context) -> Bool {
        guard unauthorized.allow(ctx.client.ip, now: ctx.now) else {
            metrics.add(counters.drops[.rateLimited])
            return false
        }
        return true
    }

    func error(_ ctx: Context, _ code: Int, reason: String? = nil, signed: Bool = true, limited: Bool = true,
                       _ extra: (inout STUNWriter) -> Void = { _ in }) -> Action {
        if limited && ctx.key.isEmpty && !allowUnauthenticatedAnswer(ctx) { return .none }
        let resultIndex = TURNCounters.results.firstIndex(of: code) ?? 1
        return finish(ctx, cls: .error, resultIndex: resultIndex, signed: signed) { w in
            w.appendErrorCode(code, reason: reason)
            extra(&w)
        }
    }

    func finish(_ ctx: Context, cls: STUNClass, resultIndex: Int, signed: Bool, _ body: (inout STUNWriter) -> Void) -> Action {
        if ctx.methodIndex >= 0 { metrics.add(counters.requests[ctx.methodIndex][resultIndex]) }
        var w = STUNWriter(into: ctx.out, method: ctx.msg.method, class: cls, transactionID: ctx.msg.transactionID)
        body(&w)
        if let software = settings.software { w.append(STUN.Attribute.software, string: software) }
        if signed && !ctx.key.isEmpty {
            let sha = ctx.sha256
            ctx.key.withUnsafeBytes { k in
                if sha { w.appendMessageIntegritySHA256(key: k) } else { w.appendMessageIntegrity(key: k) }
            }
        }
        if ctx.msg.fingerprintOffset >= 0 { w.appendFingerprint() }
        return w.overflow ? .none : .reply(length: w.count)
    }
}
