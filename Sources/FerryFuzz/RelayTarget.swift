import FerryCore
import FerryWire
import FerryRelay
import FerryClient

/// The native relay driven by a script (docs/relay-protocol.md): control messages (raw, or binds
/// signed with a credential the relay accepts, answering its challenges), WireGuard messages
/// (raw, or with indices and mac1 of the peers in play), time steps with sweeps. Invariants: an
/// answer is never larger than a bind could make it (no amplification beyond STUN Binding), a
/// packet is only ever forwarded to a bound end of a session other than its source, and the
/// tables stay within their limits.
enum RelayTarget {
    static let secret = "fuzz-relay-secret-0123"
    static let keys: [[UInt8]] = (0..<4).map { i in (0..<32).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i &* 31) } }
    /// Four UDP sources and a stream end (closing it unbinds all it held).
    static let streamEnd = RelayStreamEnd.address(worker: 1, connection: ConnectionID(9))
    static let addresses = (0..<4).map { SocketAddress(ip: IPAddress(ipv4: 0xC000_0201 + UInt32($0)), port: 51820) } + [streamEnd]

    static func run(_ data: UnsafeRawBufferPointer) {
        var r = FuzzReader(data)
        var limits = RelaySessions.Limits()
        limits.sessionsPerPeer = 3
        limits.maxSessions = 5
        limits.idleTimeout = 30
        limits.bandwidth = Double(r.byte()) * 100
        limits.burst = limits.bandwidth
        var sessions = RelaySessions(limits: limits)
        var now: UInt64 = 1_000 * 1_000_000_000
        let wall: UInt64 = 1_800_000_000
        var control = RelayControl(cookies: BindCookies(now: 1000, key: Array(repeating: 7, count: 32)), secrets: [secret],
                                   bindsPerSecond: 50, now: now)
        var cookies: [SocketAddress: [UInt8]] = [:]
        var reply = [UInt8](repeating: 0, count: 512)
        var indices: [UInt32] = [1, 2, 0xFFFF_FFFF]
        for _ in 0..<64 where !r.atEnd {
            let from = r.pick(addresses)
            switch r.byte() % 6 {
            case 0, 1:
                let raw = r.byte() % 4 == 0
                let message: [UInt8]
                if raw {
                    message = r.blob()
                } else {
                    let me = r.pick(keys), partner = r.pick(keys)
                    let token = RelayCredential(expiry: wall + UInt64(r.byte()) * 10, key: WireGuardKey(me), network: r.pick(["a", "b", ""])).token
                    let key = RelayCredential.integrityKey(secret: r.byte() % 8 == 0 ? "wrong" : secret, token: token)
                    let lifetime: UInt32? = r.byte() % 5 == 0 ? 0 : nil
                    let cookie = r.byte() % 6 == 0 ? r.take(20) : cookies[from]
                    var binder = RelayBinder(token: token, key: key, partner: partner)
                    _ = cookie.map { c in STUNWriter.build(method: RelayProtocol.bindMethod, class: .error) { w in
                        w.appendErrorCode(401, reason: "Challenge")
                        c.withUnsafeBytes { w.append(RelayProtocol.Attribute.cookie, bytes: $0) }
                    } }.map { m in m.withUnsafeBytes { _ = binder.answer($0, tid: TransactionID(high: 0, low: 0)) } }
                    message = binder.request(TransactionID(high: 0, low: 0), lifetime: lifetime)
                }
                let (n, result) = message.withUnsafeBytes { m in
                    reply.withUnsafeMutableBytes { control.handle(m, from: from, now: now, wall: wall, sessions: &sessions, reply: $0) }
                }
                require(n <= message.count || result == .stunBinding, "no amplification: \(n) for \(message.count) (\(result))")
                if result == .challenged || result == .wrongSource || result == .staleCookie {
                    reply.withUnsafeBytes { b in
                        if case .success(let m) = STUNMessage.parse(UnsafeRawBufferPointer(rebasing: b[0..<n])),
                           let c = m.attribute(RelayProtocol.Attribute.cookie) { cookies[from] = Array(c) }
                    }
                }
            case 2, 3:
                var m: [UInt8]
                switch r.byte() % 4 {
                case 0: m = WireGuardMessage.initiation(sender: r.pick(indices), responder: r.pick(keys))
                case 1:
                    m = [UInt8](repeating: 0, count: WireGuardMessage.responseLength)
                    m[0] = 2
                    withUnsafeBytes(of: r.pick(indices).littleEndian) { for i in 0..<4 { m[8 + i] = $0[i] } }
                case 2:
                    m = [UInt8](repeating: 0, count: 32 + Int(r.byte()))
                    m[0] = 4
                    withUnsafeBytes(of: r.pick(indices).littleEndian) { for i in 0..<4 { m[4 + i] = $0[i] } }
                default: m = r.blob()
                }
                let bound = Set(sessions.boundAddresses)
                m.withUnsafeBytes { b in
                    guard b.count > 0, case .wireGuard(let kind) = RelayProtocol.classify(b.baseAddress!, length: b.count) else { return }
                    if case .forward(let dest) = sessions.route(b.baseAddress!, length: b.count, kind: kind, from: from, now: now) {
                        require(dest != from, "never back to its source")
                        require(bound.contains(dest) && bound.contains(from), "only between bound ends")
                    }
                }
            case 4:
                if r.byte() % 4 == 0 {
                    // The stream end's connection closes.
                    sessions.unbindAll(at: streamEnd)
                    require(!sessions.boundAddresses.contains(streamEnd), "a closed stream holds no end")
                    break
                }
                indices.append(r.u32())
                if indices.count > 6 { indices.removeFirst() }
            default:
                now += UInt64(r.byte()) * 1_000_000_000
                sessions.sweep(now: UInt32(now / 1_000_000_000))
            }
            require(sessions.activeCount <= sessions.sessionCount && sessions.sessionCount <= limits.maxSessions, "session counts")
            require(sessions.indexCount <= 2 * RelaySessions.ringSize * sessions.sessionCount, "indices bounded by sessions")
        }
    }
}
