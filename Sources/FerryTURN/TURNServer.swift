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
    private let nonces: NonceCodec
    private unowned let relays: RelayProvider
    private let shared: TURNShared
    private let counters: TURNCounters
    private let metrics: CounterBlock
    /// The slabs, behind a pointer: the relay path reads them without exclusivity checks.
    public let table: UnsafeMutablePointer<AllocationTable>
    private var unauthorized: RateLimiter<IPAddress>

    public init(settings: TURNSettings, credentials: CredentialStore, nonces: NonceCodec, policy: PeerPolicy,
                relays: RelayProvider, shared: TURNShared, counters: TURNCounters, metrics: CounterBlock) {
        self.settings = settings
        self.credentials = credentials
        self.nonces = nonces
        self.policy = policy
        self.relays = relays
        self.shared = shared
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

    /// Reload: new users, secrets and peer policy apply to new requests at once.
    public func update(credentials: CredentialStore, policy: PeerPolicy) {
        self.credentials = credentials
        self.policy = policy
    }

    public var activeAllocations: Int { table.pointee.activeCount }

    /// What the caller does after `handle`.
    public enum Action {
        case none
        /// Send the `length` bytes written to `out` back to the client.
        case reply(length: Int)
        /// A Send indication's DATA (a slice of the request) goes to `peer` via relay `handle`.
        case relay(handle: Int32, peer: SocketAddress, payload: UnsafeRawBufferPointer)
    }

    /// Handles one STUN message from `client` (on listener `listener`).
    public func handle(_ msg: STUNMessage, client: SocketAddress, listener: Int32, now: UInt64, wallNow: UInt64,
                       out: UnsafeMutableRawBufferPointer) -> Action {
        switch msg.messageClass {
        case .request:
            return request(msg, client: client, listener: listener, now: now, wallNow: wallNow, out: out)
        case .indication:
            if msg.method == STUN.Method.send { return sendIndication(msg, client: client, listener: listener, now: now) }
            return .none
        case .success, .error:
            return .none  // a server ignores responses (RFC 8489 §6.3.3)
        }
    }

    // MARK: Requests

    private struct Context {
        let msg: STUNMessage
        let client: SocketAddress
        let listener: Int32
        let now: UInt64
        let wallNow: UInt64
        let out: UnsafeMutableRawBufferPointer
        var key: [UInt8] = []
        var sha256 = false
        var username = ""
        var methodIndex: Int
    }

    private func request(_ msg: STUNMessage, client: SocketAddress, listener: Int32, now: UInt64, wallNow: UInt64,
                         out: UnsafeMutableRawBufferPointer) -> Action {
        let methodIndex = TURNCounters.methods.firstIndex(of: msg.method) ?? -1
        var ctx = Context(msg: msg, client: client, listener: listener, now: now, wallNow: wallNow, out: out, methodIndex: methodIndex)
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
    private func binding(_ ctx: Context) -> Action {
        success(ctx, signed: false) { w in w.append(STUN.Attribute.xorMappedAddress, xorAddress: ctx.client) }
    }

    // MARK: Authentication (RFC 8489 §9.2.4)

    private func authenticate(_ ctx: inout Context) -> Action? {
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
            metrics.add(counters.authFailures[.badRequest]!)
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
    private func challenge(_ ctx: Context, _ code: Int, _ why: TURNCounters.AuthFailure, _ ip: [UInt8]) -> Action {
        metrics.add(counters.authFailures[why]!)
        guard allowUnauthenticatedAnswer(ctx) else { return .none }
        let nonce = nonces.make(for: ip, now: ctx.wallNow)
        let realm = credentials.realm
        return error(ctx, code, signed: false, limited: false) { w in
            w.append(STUN.Attribute.realm, string: realm)
            w.append(STUN.Attribute.nonce, string: nonce)
        }
    }

    // MARK: Allocate (RFC 8656 §7.2)

    private func allocate(_ ctx: Context) -> Action {
        let msg = ctx.msg
        let key = ClientKey(address: ctx.client, listener: ctx.listener)
        // 1. "The server checks if the 5-tuple is currently in use by an existing allocation. If
        // yes, the server rejects the request with a 437 (Allocation Mismatch) error." A
        // retransmission of the Allocate that made it gets the same success again.
        if let slot = table.pointee.byClient[key] {
            let a = table.pointee.allocations[Int(slot)]
            if a.allocateTransaction == msg.transactionID && a.username == ctx.username {
                return allocateSuccess(ctx, slot: slot, reservation: nil, familyError: false)
            }
            return error(ctx, 437)
        }
        // 2. "The server checks if the request contains a REQUESTED-TRANSPORT attribute. If the
        // REQUESTED-TRANSPORT attribute is not included or is malformed, the server rejects the
        // request with a 400 (Bad Request) error. Otherwise, if the attribute indicates UDP
        // transport, the server continues with the procedures of this section. If the attribute
        // specifies any value other than UDP, the server rejects the request with a 442."
        guard let transport = msg.attribute(STUN.Attribute.requestedTransport), transport.count == 4 else {
            return error(ctx, 400, reason: "Missing REQUESTED-TRANSPORT")
        }
        guard transport[0] == 17 else { return error(ctx, 442) }
        // 3. DONT-FRAGMENT is supported (the relayed socket sets DF).
        let dontFragment = msg.has(STUN.Attribute.dontFragment)
        // 4. "The server checks if the request contains a RESERVATION-TOKEN attribute. If yes, and
        // the request also contains an EVEN-PORT or REQUESTED-ADDRESS-FAMILY or
        // ADDITIONAL-ADDRESS-FAMILY attribute, the server rejects the request with a 400."
        let tokenAttr = msg.attribute(STUN.Attribute.reservationToken)
        let evenPort = msg.attribute(STUN.Attribute.evenPort)
        let requestedFamily = msg.attribute(STUN.Attribute.requestedAddressFamily)
        let additionalFamily = msg.attribute(STUN.Attribute.additionalAddressFamily)
        if tokenAttr != nil && (evenPort != nil || requestedFamily != nil || additionalFamily != nil) {
            return error(ctx, 400, reason: "RESERVATION-TOKEN with EVEN-PORT or an address family")
        }
        if let t = tokenAttr, t.count != 8 { return error(ctx, 400, reason: "Malformed RESERVATION-TOKEN") }
        if let e = evenPort, e.count != 1 { return error(ctx, 400, reason: "Malformed EVEN-PORT") }
        // Address families (RFC 8656 §7.2 step 5 and 6): REQUESTED-ADDRESS-FAMILY picks one;
        // ADDITIONAL-ADDRESS-FAMILY (IPv6 only) asks for IPv4 and IPv6 both; not both at once.
        if requestedFamily != nil && additionalFamily != nil {
            return error(ctx, 400, reason: "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together")
        }
        var families: [IPFamily] = [.ipv4]
        if let f = requestedFamily {
            guard f.count == 4, let fam = IPFamily(rawValue: f[0]) else { return error(ctx, 440) }
            families = [fam]
        }
        if let f = additionalFamily {
            guard f.count == 4, f[0] == IPFamily.ipv6.rawValue else { return error(ctx, 400, reason: "ADDITIONAL-ADDRESS-FAMILY must be IPv6") }
            families = [.ipv4, .ipv6]
        }
        let primary = families[0]
        guard bindIP(primary) != nil || tokenAttr != nil else { return error(ctx, 440) }
        // Quotas: per user (486) and this worker's capacity (508).
        guard shared.reserveUserSlot(ctx.username, limit: settings.maxAllocationsPerUser) else {
            metrics.add(counters.drops[.quota]!)
            return error(ctx, 486)
        }
        guard let slot = table.pointee.take(key) else {
            shared.releaseUserSlot(ctx.username)
            metrics.add(counters.drops[.quota]!)
            return error(ctx, 508)
        }
        let generation = table.pointee.allocations[Int(slot)].generation
        var reservationToken: UInt64?
        var familyError = false
        func fail(_ code: Int) -> Action {
            closeRelays(slot)
            table.pointee.remove(slot)
            shared.releaseUserSlot(ctx.username)
            return error(ctx, code)
        }
        if let t = tokenAttr {
            // 6. "If the request contains a RESERVATION-TOKEN, the server uses the previously
            // reserved transport address ... If the token is not valid, 508."
            let token = t.u64(0)
            guard let r = shared.takeReservation(token) else { return fail(508) }
            relays.adopt(handle: r.handle, slot: slot, generation: generation)
            setRelay(slot, family: r.family, handle: r.handle, port: r.port)
        } else {
            for (i, family) in families.enumerated() {
                guard let ip = bindIP(family) else {
                    // A dual allocation whose second family is not served: the first stands and
                    // ADDRESS-ERROR-CODE says why (RFC 8656 §7.2).
                    if i > 0 { familyError = true; continue }
                    return fail(440)
                }
                let even = i == 0 && evenPort != nil
                guard let opened = relays.openRelay(ip: ip, evenPort: even, slot: slot, generation: generation) else {
                    if i > 0 { familyError = true; continue }
                    return fail(508)
                }
                setRelay(slot, family: family, handle: opened.handle, port: opened.port)
                // EVEN-PORT with the R bit: also hold port+1 and hand out a token for it.
                if even, let e = evenPort, e[0] & 0x80 != 0 {
                    guard opened.port < 65535, let reserved = relays.openReserved(ip: ip, port: opened.port + 1) else {
                        return fail(508)
                    }
                    var g = SystemRandomNumberGenerator()
                    let token: UInt64 = g.next()
                    shared.addReservation(token, .init(handle: reserved, port: opened.port + 1, family: family,
                                                       expiry: ctx.now + 30_000_000_000))
                    reservationToken = token
                }
            }
        }
        let a = table.pointee.allocations[Int(slot)]
        if dontFragment {
            if a.relay4 >= 0 { relays.setDontFragment(handle: a.relay4) }
            if a.relay6 >= 0 { relays.setDontFragment(handle: a.relay6) }
        }
        let lifetime = grantedLifetime(msg, allowZero: false)
        table.pointee.allocations[Int(slot)].expiry = ctx.now + UInt64(lifetime) * 1_000_000_000
        table.pointee.allocations[Int(slot)].username = ctx.username
        table.pointee.allocations[Int(slot)].key = ctx.key
        table.pointee.allocations[Int(slot)].allocateTransaction = msg.transactionID
        table.pointee.allocations[Int(slot)].tokens = Double(burstBytes)
        table.pointee.allocations[Int(slot)].tokensAt = ctx.now
        metrics.add(counters.allocationsCreated)
        metrics.set(counters.allocationsActive, UInt64(table.pointee.activeCount))
        return allocateSuccess(ctx, slot: slot, reservation: reservationToken, familyError: familyError)
    }

    private func allocateSuccess(_ ctx: Context, slot: Int32, reservation: UInt64?, familyError: Bool) -> Action {
        let a = table.pointee.allocations[Int(slot)]
        let remaining = UInt32((a.expiry > ctx.now ? a.expiry - ctx.now : 0) / 1_000_000_000)
        return success(ctx) { w in
            if a.relay4 >= 0 { w.append(STUN.Attribute.xorRelayedAddress, xorAddress: a.relayAddress4) }
            if a.relay6 >= 0 { w.append(STUN.Attribute.xorRelayedAddress, xorAddress: a.relayAddress6) }
            if familyError {
                // ADDRESS-ERROR-CODE (RFC 8656 §18.10): family, then an ERROR-CODE body.
                let reason = Array("Address Family not Supported".utf8)
                w.append(STUN.Attribute.addressErrorCode, length: 4 + reason.count) { p in
                    p.storeBytes(of: IPFamily.ipv6.rawValue, as: UInt8.self)
                    p.storeBytes(of: UInt8(0), toByteOffset: 1, as: UInt8.self)
                    p.storeBytes(of: UInt8(4), toByteOffset: 2, as: UInt8.self)
                    p.storeBytes(of: UInt8(40), toByteOffset: 3, as: UInt8.self)
                    reason.withUnsafeBytes { (p + 4).copyMemory(from: $0.baseAddress!, byteCount: reason.count) }
                }
            }
            w.append(STUN.Attribute.lifetime, uint32: remaining)
            if let token = reservation {
                w.append(STUN.Attribute.reservationToken, length: 8) { $0.storeBytes(of: token.bigEndian, as: UInt64.self) }
            }
            w.append(STUN.Attribute.xorMappedAddress, xorAddress: ctx.client)
        }
    }

    private func bindIP(_ family: IPFamily) -> IPAddress? {
        family == .ipv4 ? settings.relayIPv4 : settings.relayIPv6
    }

    private func setRelay(_ slot: Int32, family: IPFamily, handle: Int32, port: UInt16) {
        if family == .ipv4 {
            let ip = settings.externalIPv4 ?? settings.relayIPv4 ?? .ipv4Any
            table.pointee.allocations[Int(slot)].relay4 = handle
            table.pointee.allocations[Int(slot)].relayAddress4 = SocketAddress(ip: ip, port: port)
        } else {
            let ip = settings.externalIPv6 ?? settings.relayIPv6 ?? .ipv6Any
            table.pointee.allocations[Int(slot)].relay6 = handle
            table.pointee.allocations[Int(slot)].relayAddress6 = SocketAddress(ip: ip, port: port)
        }
    }

    private func closeRelays(_ slot: Int32) {
        let a = table.pointee.allocations[Int(slot)]
        if a.relay4 >= 0 { relays.closeRelay(handle: a.relay4) }
        if a.relay6 >= 0 { relays.closeRelay(handle: a.relay6) }
        table.pointee.allocations[Int(slot)].relay4 = -1
        table.pointee.allocations[Int(slot)].relay6 = -1
    }

    private var burstBytes: UInt64 {
        settings.bandwidthBurst > 0 ? settings.bandwidthBurst : settings.bandwidthPerAllocation
    }

    /// RFC 8656 §7.2 / §7.5: min(requested, maximum), but not less than the default; 0 only
    /// where a Refresh may delete.
    private func grantedLifetime(_ msg: STUNMessage, allowZero: Bool) -> UInt32 {
        guard let requested = msg.uint32(STUN.Attribute.lifetime) else { return settings.defaultLifetime }
        if requested == 0 && allowZero { return 0 }
        let capped = min(requested, settings.maxLifetime)
        return capped > settings.defaultLifetime ? capped : settings.defaultLifetime
    }

    /// The allocation a request may act on: 437 without one, 441 with other credentials.
    private enum Owned {
        case slot(Int32)
        case answered(Action)
    }

    private func ownAllocation(_ ctx: Context) -> Owned {
        guard let slot = table.pointee.byClient[ClientKey(address: ctx.client, listener: ctx.listener)] else {
            return .answered(error(ctx, 437))
        }
        // RFC 8656 §5: "the request MUST be authenticated with the same username and password
        // as the Allocate" — else 441 (Wrong Credentials).
        if table.pointee.allocations[Int(slot)].username != ctx.username {
            metrics.add(counters.authFailures[.wrongCredentials]!)
            return .answered(error(ctx, 441))
        }
        return .slot(slot)
    }

    // MARK: Refresh (RFC 8656 §7.5)

    private func refresh(_ ctx: Context) -> Action {
        let slot: Int32
        switch ownAllocation(ctx) {
        case .answered(let a): return a
        case .slot(let s): slot = s
        }
        let a = table.pointee.allocations[Int(slot)]
        let lifetime = grantedLifetime(ctx.msg, allowZero: true)
        // REQUESTED-ADDRESS-FAMILY in a Refresh names one family of a dual allocation
        // (RFC 8656 §7.5): 443 if the allocation has no relay of that family.
        if let f = ctx.msg.attribute(STUN.Attribute.requestedAddressFamily) {
            guard f.count == 4, let family = IPFamily(rawValue: f[0]) else { return error(ctx, 440) }
            guard a.relay(for: family) >= 0 else { return error(ctx, 443) }
            if lifetime == 0 && a.relay4 >= 0 && a.relay6 >= 0 {
                relays.closeRelay(handle: a.relay(for: family))
                if family == .ipv4 { table.pointee.allocations[Int(slot)].relay4 = -1 } else { table.pointee.allocations[Int(slot)].relay6 = -1 }
                return success(ctx) { w in w.append(STUN.Attribute.lifetime, uint32: UInt32((a.expiry - min(a.expiry, ctx.now)) / 1_000_000_000)) }
            }
        }
        if lifetime == 0 {
            delete(slot)
            metrics.add(counters.allocationsDeleted)
        } else {
            table.pointee.allocations[Int(slot)].expiry = ctx.now + UInt64(lifetime) * 1_000_000_000
        }
        return success(ctx) { w in w.append(STUN.Attribute.lifetime, uint32: lifetime) }
    }

    private func delete(_ slot: Int32) {
        let user = table.pointee.allocations[Int(slot)].username
        closeRelays(slot)
        table.pointee.remove(slot)
        shared.releaseUserSlot(user)
        metrics.set(counters.allocationsActive, UInt64(table.pointee.activeCount))
    }

    // MARK: CreatePermission (RFC 8656 §9.2)

    private func createPermission(_ ctx: Context) -> Action {
        let slot: Int32
        switch ownAllocation(ctx) {
        case .answered(let a): return a
        case .slot(let s): slot = s
        }
        // "When the server receives the CreatePermission request, it processes as per Section 5
        // plus the specific rules mentioned here. The message is checked for validity. The
        // CreatePermission request MUST contain at least one XOR-PEER-ADDRESS attribute..."
        guard let peers = ctx.msg.allXORAddresses(STUN.Attribute.xorPeerAddress), !peers.isEmpty else {
            metrics.add(counters.drops[.malformed]!)
            return error(ctx, 400, reason: "Missing or malformed XOR-PEER-ADDRESS")
        }
        let a = table.pointee.allocations[Int(slot)]
        for peer in peers {
            // "If an XOR-PEER-ADDRESS attribute contains an address of an address family that is
            // not the same as that of a relayed transport address for the allocation, the server
            // MUST generate an error response with the 443 (Peer Address Family Mismatch)."
            if a.relay(for: IPFamily(peer.ip)) < 0 { return error(ctx, 443) }
            // "If the server is ... configured to forbid ... the address, 403 (Forbidden)."
            if !policy.permits(peer.ip) {
                metrics.add(counters.drops[.deniedPeer]!)
                return error(ctx, 403)
            }
        }
        // "The server MAY impose restrictions on the IP address ... values allowed ... If the
        // server cannot install the permissions, 508 (Insufficient Capacity)." All or nothing.
        let expiry = ctx.now + TURNSettings.permissionLifetime * 1_000_000_000
        guard installPermissions(slot, peers.map(\.ip), expiry: expiry, now: ctx.now) else {
            metrics.add(counters.drops[.quota]!)
            return error(ctx, 508)
        }
        return success(ctx) { _ in }
    }

    /// Installs or refreshes permissions for `ips`, reusing expired slots; false (and no change)
    /// when they do not fit.
    private func installPermissions(_ slot: Int32, _ ips: [IPAddress], expiry: UInt64, now: UInt64) -> Bool {
        let base = table.pointee.permissionBase(slot)
        var count = Int(table.pointee.allocations[Int(slot)].permissionCount)
        let limit = table.pointee.permissionsPer
        var needed = 0
        var seen: [IPAddress] = []
        for ip in ips where !seen.contains(ip) {
            seen.append(ip)
            if !(0..<count).contains(where: { base[$0].ip == ip }) { needed += 1 }
        }
        let reusable = (0..<count).filter { base[$0].expiry <= now && !seen.contains(base[$0].ip) }.count
        guard count - reusable + needed <= limit else { return false }
        for ip in seen {
            if let i = (0..<count).first(where: { base[$0].ip == ip }) {
                base[i].expiry = expiry
                continue
            }
            if let i = (0..<count).first(where: { base[$0].expiry <= now && !seen.contains(base[$0].ip) }) {
                base[i] = Permission(ip: ip, expiry: expiry)
            } else {
                base[count] = Permission(ip: ip, expiry: expiry)
                count += 1
            }
            metrics.add(counters.permissionsCreated)
        }
        table.pointee.allocations[Int(slot)].permissionCount = Int32(count)
        return true
    }

    // MARK: ChannelBind (RFC 8656 §11.2)

    private func channelBind(_ ctx: Context) -> Action {
        let slot: Int32
        switch ownAllocation(ctx) {
        case .answered(let a): return a
        case .slot(let s): slot = s
        }
        // "The request contains both a CHANNEL-NUMBER and an XOR-PEER-ADDRESS attribute; the
        // channel number is in the range 0x4000 through 0x4FFF (inclusive)" — else 400. RFC 5766
        // §11 allowed "0x4000 through 0x7FFF" and coturn's clients still use all of it: accepted
        // unless strict.
        guard let cn = ctx.msg.attribute(STUN.Attribute.channelNumber), cn.count == 4 else {
            return error(ctx, 400, reason: "Missing CHANNEL-NUMBER")
        }
        let number = cn.u16(0)
        let highest = settings.strictChannelNumbers ? ChannelData.maxChannel : ChannelData.maxLegacyChannel
        guard number >= ChannelData.minChannel && number <= highest else { return error(ctx, 400, reason: "Channel number out of range") }
        guard let peer = ctx.msg.xorAddress(STUN.Attribute.xorPeerAddress) else {
            metrics.add(counters.drops[.malformed]!)
            return error(ctx, 400, reason: "Missing or malformed XOR-PEER-ADDRESS")
        }
        let a = table.pointee.allocations[Int(slot)]
        if a.relay(for: IPFamily(peer.ip)) < 0 { return error(ctx, 443) }
        if !policy.permits(peer.ip) {
            metrics.add(counters.drops[.deniedPeer]!)
            return error(ctx, 403)
        }
        let base = table.pointee.channelBase(slot)
        var count = Int(a.channelCount)
        let now = ctx.now
        // "The channel number is not currently bound to a different transport address (same
        // transport address is OK); the transport address is not currently bound to a different
        // channel number." A binding counts until its reuse delay has passed too.
        var existing: Int?
        for i in 0..<count where base[i].reservedUntil > now {
            if base[i].number == number && base[i].peer != peer {
                return error(ctx, 400, reason: "Channel bound to another peer")
            }
            if base[i].peer == peer && base[i].number != number {
                return error(ctx, 400, reason: "Peer bound to another channel")
            }
            if base[i].number == number { existing = i }
        }
        let expiry = now + TURNSettings.channelLifetime * 1_000_000_000
        let reserved = expiry + TURNSettings.channelReuseDelay * 1_000_000_000
        let isNew = existing == nil
        if existing == nil {
            // A free slot: never used, or past its reuse delay.
            if let i = (0..<count).first(where: { base[$0].reservedUntil <= now }) {
                existing = i
            } else if count < table.pointee.channelsPer {
                existing = count
                count += 1
            } else {
                metrics.add(counters.drops[.quota]!)
                return error(ctx, 508)
            }
        }
        // "In addition, the server MUST install or refresh a permission for the IP address."
        guard installPermissions(slot, [peer.ip], expiry: now + TURNSettings.permissionLifetime * 1_000_000_000, now: now) else {
            metrics.add(counters.drops[.quota]!)
            return error(ctx, 508)
        }
        base[existing!] = ChannelBinding(number: number, peer: peer, expiry: expiry, reservedUntil: reserved)
        table.pointee.allocations[Int(slot)].channelCount = Int32(count)
        // Counted once the binding exists (a 508 from the permission above made none).
        if isNew { metrics.add(counters.channelsBound) }
        return success(ctx) { _ in }
    }

    // MARK: Send indication (RFC 8656 §10.2)

    private func sendIndication(_ msg: STUNMessage, client: SocketAddress, listener: Int32, now: UInt64) -> Action {
        guard let slot = table.pointee.byClient[ClientKey(address: client, listener: listener)] else {
            metrics.add(counters.drops[.noAllocation]!)
            return .none
        }
        // "The message is first checked for validity. The Send indication MUST contain both an
        // XOR-PEER-ADDRESS attribute and a DATA attribute. If one of these attributes is missing
        // or invalid, then the message is discarded."
        guard let peer = msg.xorAddress(STUN.Attribute.xorPeerAddress), let data = msg.attribute(STUN.Attribute.data) else {
            metrics.add(counters.drops[.malformed]!)
            return .none
        }
        let handle = table.pointee.allocations[Int(slot)].relay(for: IPFamily(peer.ip))
        guard handle >= 0 else {
            metrics.add(counters.drops[.malformed]!)
            return .none
        }
        // "...the server MUST check that there is a permission installed for the IP address
        // contained in the XOR-PEER-ADDRESS attribute. If no such permission exists, the message
        // is discarded."
        guard table.pointee.hasPermission(slot, peer.ip, now: now) else {
            metrics.add(counters.drops[.noPermission]!)
            return .none
        }
        guard consumeBandwidth(slot, bytes: data.count, now: now) else {
            metrics.add(counters.drops[.quota]!)
            return .none
        }
        metrics.add(counters.relayedPackets.toPeer)
        metrics.add(counters.relayedBytes.toPeer, UInt64(data.count))
        return .relay(handle: handle, peer: peer, payload: data)
    }

    // MARK: The relay path

    /// Where a client's ChannelData goes: the relay handle and peer, or nil (dropped and
    /// counted). Per packet: one hash lookup, a scan of the allocation's few channels, a token
    /// bucket. Counting of relayed packets is left to the caller, once per batch.
    @inlinable
    public func channelTarget(client: ClientKey, channel: UInt16, length: Int, now: UInt64) -> (handle: Int32, peer: SocketAddress)? {
        let t = table
        guard let slot = t.pointee.byClient[client] else {
            drop(.noAllocation)
            return nil
        }
        guard let peer = t.pointee.peer(slot, channel: channel, now: now) else {
            drop(.noChannel)
            return nil
        }
        let handle = t.pointee.allocations[Int(slot)].relay(for: IPFamily(peer.ip))
        guard handle >= 0 else {
            drop(.malformed)
            return nil
        }
        guard consumeBandwidth(slot, bytes: length, now: now) else {
            drop(.quota)
            return nil
        }
        return (handle, peer)
    }

    /// How a datagram from `peer` on allocation `slot`'s relay reaches the client.
    public enum PeerRoute {
        case drop
        /// As ChannelData on this channel.
        case channel(UInt16, client: SocketAddress, listener: Int32)
        /// As a Data indication.
        case indication(client: SocketAddress, listener: Int32)
    }

    /// RFC 8656 §10.3 and §12.5: a datagram from a peer is relayed only if the peer's IP has a
    /// permission; through its channel if one is bound, else in a Data indication.
    @inlinable
    public func peerRoute(slot: Int32, generation: UInt32, peer: SocketAddress, length: Int, now: UInt64) -> PeerRoute {
        let t = table
        let a = t.pointee.allocations + Int(slot)
        guard a.pointee.active, a.pointee.generation == generation else {
            drop(.noAllocation)
            return .drop
        }
        guard t.pointee.hasPermission(slot, peer.ip, now: now) else {
            drop(.noPermission)
            return .drop
        }
        guard consumeBandwidth(slot, bytes: length, now: now) else {
            drop(.quota)
            return .drop
        }
        let channel = t.pointee.channel(slot, peer: peer, now: now)
        if channel != 0 { return .channel(channel, client: a.pointee.client, listener: a.pointee.listener) }
        return .indication(client: a.pointee.client, listener: a.pointee.listener)
    }

    @usableFromInline
    func drop(_ reason: TURNCounters.Drop) { metrics.add(counters.drops[reason]!) }

    /// Counts a drop found by the caller (send errors, full buffers, malformed ChannelData).
    public func countDrop(_ reason: TURNCounters.Drop, _ n: UInt64 = 1) { metrics.add(counters.drops[reason]!, n) }

    /// Counts relayed traffic, once per batch.
    public func countRelayed(toPeer: Bool, packets: UInt64, bytes: UInt64) {
        metrics.add(toPeer ? counters.relayedPackets.toPeer : counters.relayedPackets.toClient, packets)
        metrics.add(toPeer ? counters.relayedBytes.toPeer : counters.relayedBytes.toClient, bytes)
    }

    /// The per-allocation bandwidth bucket (bytes per second, both directions).
    @usableFromInline
    func consumeBandwidth(_ slot: Int32, bytes: Int, now: UInt64) -> Bool {
        let rate = settings.bandwidthPerAllocation
        if rate == 0 { return true }
        let a = table.pointee.allocations + Int(slot)
        let elapsed = Double(now &- a.pointee.tokensAt) / 1e9
        a.pointee.tokens = min(Double(burstBytes), a.pointee.tokens + elapsed * Double(rate))
        a.pointee.tokensAt = now
        guard a.pointee.tokens >= Double(bytes) else { return false }
        a.pointee.tokens -= Double(bytes)
        return true
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
                delete(Int32(i))
                metrics.add(counters.allocationsExpired)
            }
        }
        for r in shared.expiredReservations(now: now) { relays.closeRelay(handle: r.handle) }
        unauthorized.sweep(now: now)
    }

    /// The client's transport connection closed (TURN over TCP/TLS): its allocation goes with it
    /// (RFC 8656 §3.1: "the allocation is deleted when the connection closes").
    public func clientGone(_ key: ClientKey) {
        guard let slot = table.pointee.byClient[key] else { return }
        delete(slot)
        metrics.add(counters.allocationsDeleted)
    }

    /// Every allocation goes (shutdown).
    public func closeAll() {
        for i in 0..<table.pointee.usedSlots where table.pointee.allocations[i].active { delete(Int32(i)) }
    }

    // MARK: Answers

    /// A success response, signed with the request's key when authenticated, FINGERPRINT when
    /// the request had one (RFC 8489 §7.3.1.1, §9.2.4).
    private func success(_ ctx: Context, signed: Bool = true, _ body: (inout STUNWriter) -> Void) -> Action {
        finish(ctx, cls: .success, resultIndex: 0, signed: signed, body)
    }

    /// Every error answer to a request that did not authenticate (400, 420, 401, 438) shares the
    /// per-source limit: such answers are larger than the requests that cause them, so without
    /// the limit a spoofed source could use the server to reflect traffic. Over it: dropped.
    private func allowUnauthenticatedAnswer(_ ctx: Context) -> Bool {
        guard unauthorized.allow(ctx.client.ip, now: ctx.now) else {
            metrics.add(counters.drops[.rateLimited]!)
            return false
        }
        return true
    }

    private func error(_ ctx: Context, _ code: Int, reason: String? = nil, signed: Bool = true, limited: Bool = true,
                       _ extra: (inout STUNWriter) -> Void = { _ in }) -> Action {
        if limited && ctx.key.isEmpty && !allowUnauthenticatedAnswer(ctx) { return .none }
        let resultIndex = TURNCounters.results.firstIndex(of: code) ?? 1
        return finish(ctx, cls: .error, resultIndex: resultIndex, signed: signed) { w in
            w.appendErrorCode(code, reason: reason)
            extra(&w)
        }
    }

    private func finish(_ ctx: Context, cls: STUNClass, resultIndex: Int, signed: Bool, _ body: (inout STUNWriter) -> Void) -> Action {
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
