import FerryCore
import FerrySystem
import FerryTURN
import FerryWire

/// Relayed sockets as numbers, with the bookkeeping the target checks: every relay the server
/// is given must be open when it is used, and closed when its allocation goes; every reservation
/// is adopted or closed exactly once.
final class FuzzRelays: RelayProvider {
    var nextHandle: Int32 = 100
    var nextPort: UInt16 = 50000
    /// Open relays and whom they serve (slot, generation).
    var open: [RelayID: (slot: Int32, generation: UInt32)] = [:]
    /// Reservations not yet adopted or closed.
    var reserved: Set<Int32> = []
    var failOpen = false

    func openRelay(ip: IPAddress, evenPort: Bool, slot: Int32, generation: UInt32) -> (relay: RelayID, port: UInt16)? {
        if failOpen { return nil }
        if evenPort && nextPort % 2 == 1 { nextPort &+= 1 }
        defer { nextHandle += 1; nextPort &+= 2 }
        let id = RelayID(slot: nextHandle, generation: 1)
        open[id] = (slot, generation)
        return (id, nextPort)
    }

    func openReserved(ip: IPAddress, port: UInt16) -> ReservedRelay? {
        if failOpen { return nil }
        defer { nextHandle += 1 }
        reserved.insert(nextHandle)
        return ReservedRelay(token: nextHandle)
    }

    func adopt(_ r: ReservedRelay, slot: Int32, generation: UInt32) -> RelayID? {
        require(reserved.remove(r.token) != nil, "adopts an open reservation")
        let id = RelayID(slot: r.token, generation: 1)
        open[id] = (slot, generation)
        return id
    }

    func closeRelay(_ relay: RelayID) {
        require(open.removeValue(forKey: relay) != nil, "closes a relay once (\(relay))")
    }

    func closeReserved(_ r: ReservedRelay) {
        require(reserved.remove(r.token) != nil, "closes a reservation once (\(r.token))")
    }

    func setDontFragment(_ relay: RelayID) { require(open[relay] != nil, "DONT-FRAGMENT on an open relay") }
}

/// The TURN server driven by a script of requests (with and without valid long-term or REST
/// credentials), indications, ChannelData, peer datagrams, time steps, sweeps, closed
/// connections and reloads. Checks: every answer is a well-formed STUN response to its
/// request; relaying uses only open relays and known clients; at the end no relay and no user
/// quota slot is left behind.
enum TURNServerTarget {
    static let metrics = CounterBlock.standalone()
    static let counters = TURNCounters.sequential()
    static let realm = "fuzz.realm"
    static let secret = "rest-secret"
    static let clients: [ClientKey] = [
        ClientKey(address: SocketAddress("203.0.113.5:40000")!, transport: .udp(listener: 0)),
        ClientKey(address: SocketAddress("203.0.113.6:40001")!, transport: .udp(listener: 0)),
        ClientKey(address: SocketAddress("[2001:db8::5]:40000")!, transport: .udp(listener: 1)),
        ClientKey(address: SocketAddress("203.0.113.5:40000")!, transport: .stream(ConnectionID(7))),
    ]
    /// Peers the policy allows and denies, in several encodings.
    static let peers: [SocketAddress] = ["192.0.2.10:7000", "192.0.2.11:7001", "198.51.100.20:9", "127.0.0.1:7000",
                                         "10.1.2.3:80", "169.254.169.254:80", "[::1]:7000", "[::ffff:127.0.0.1]:7000",
                                         "[2001:db8::20]:7000", "[64:ff9b::a9fe:a9fe]:80", "0.0.0.0:0", "[::]:0"].map { SocketAddress($0)! }
    static let users: [(name: String, password: String)] = [("alice", "wonderland"), ("bob", "builder")]

    static func run(_ b: UnsafeRawBufferPointer) {
        var r = FuzzReader(b)
        let relays = FuzzRelays()
        let shared = TURNShared()
        var settings = TURNSettings()
        settings.realm = realm
        settings.relayIPv4 = IPAddress("198.51.100.1")
        settings.relayIPv6 = r.byte() % 2 == 0 ? IPAddress("2001:db8::1") : nil
        settings.maxAllocations = 1 + Int(r.byte() % 4)
        settings.maxAllocationsPerUser = 1 + Int(r.byte() % 3)
        settings.maxPermissionsPerAllocation = 1 + Int(r.byte() % 4)
        settings.maxChannelsPerAllocation = 1 + Int(r.byte() % 4)
        settings.bandwidthPerAllocation = UInt64(r.byte() % 4) * 1000
        settings.bandwidthBurst = UInt64(r.byte() % 4) * 500
        settings.unauthorizedPerSecond = Double(r.byte() % 3)
        settings.unauthorizedBurst = Double(r.byte() % 3)
        settings.strictChannelNumbers = r.byte() % 2 == 0
        settings.maxLifetime = UInt32(r.u16())
        let credentials = CredentialStore(realm: realm, users: ["alice": .password("wonderland"), "bob": .password("builder")],
                                          secrets: [secret])
        let server = TURNServer(settings: settings, credentials: credentials,
                                nonces: NonceCodec(secret: Array("nonce-key".utf8), lifetimeSeconds: 1 + UInt64(r.byte())),
                                policy: PeerPolicy(), relays: relays, shared: shared, counters: counters, metrics: metrics)
        var now: UInt64 = 1_000_000_000_000
        var wall: UInt64 = 1_800_000_000
        var nonces = [String](repeating: "", count: clients.count)
        var lastToken: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 1]
        var out = [UInt8](repeating: 0, count: 1500)
        var usernames: Set<String> = ["alice", "bob"]
        // Every allocation that ends says so once, with a record of what it was.
        var ends = 0
        let startWall = wall
        server.onEnd = { record, _ in
            require(record.created >= startWall && !record.username.isEmpty, "an ended allocation has its creation time and user")
            ends += 1
        }

        /// Hands a message to the server and checks what it does.
        func handle(_ bytes: [UInt8], client c: Int) {
            bytes.withUnsafeBytes { raw in
                guard case .success(let msg) = STUNMessage.parse(raw) else { return }
                let action = out.withUnsafeMutableBytes { o in
                    server.handle(msg, from: clients[c], now: now, wallNow: wall, out: o)
                }
                switch action {
                case .none:
                    break
                case .reply(let n):
                    require(msg.messageClass == .request, "only requests are answered")
                    out.withUnsafeBytes { o in
                        guard case .success(let reply) = STUNMessage.parse(UnsafeRawBufferPointer(rebasing: o[..<n])) else {
                            require(false, "an answer parses as STUN")
                            return
                        }
                        require(reply.transactionID == msg.transactionID && reply.method == msg.method, "an answer matches its request")
                        require(reply.messageClass == .success || reply.messageClass == .error, "an answer is a response")
                        if let nonce = reply.string(STUN.Attribute.nonce) { nonces[c] = nonce }
                        if let token = reply.attribute(STUN.Attribute.reservationToken), token.count == 8 { lastToken = Array(token) }
                    }
                case .relay(let handle, let peer, let payload):
                    require(relays.open[handle] != nil, "a Send indication is relayed through an open relay")
                    require(server.policy.permits(peer: peer, live: server.relayPorts), "a Send indication reaches only a permitted peer")
                    require(payload.baseAddress! >= raw.baseAddress! && payload.baseAddress! + payload.count <= raw.baseAddress! + raw.count,
                            "the relayed payload is a slice of the request")
                }
            }
        }

        func request(_ method: UInt16, client c: Int) {
            var attributes: [(inout STUNWriter) -> Void] = []
            for _ in 0..<Int(r.byte() % 6) {
                switch r.byte() % 12 {
                case 0:
                    let t = r.pick([17 << 24, 6 << 24, 0, 17 << 24 | 1] as [UInt32])
                    attributes.append { $0.append(STUN.Attribute.requestedTransport, uint32: t) }
                case 1:
                    let l = r.pick([0, 1, 600, 3600, UInt32.max, r.u32()] as [UInt32])
                    attributes.append { $0.append(STUN.Attribute.lifetime, uint32: l) }
                case 2:
                    let p = r.pick(peers)
                    attributes.append { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: p) }
                case 3:
                    let n = r.pick([0x4000, 0x4001, 0x4FFF, 0x5000, 0x7FFF, 0x8000, 0x3FFF, r.u16()] as [UInt16])
                    attributes.append { $0.append(STUN.Attribute.channelNumber, uint32: UInt32(n) << 16) }
                case 4:
                    let v = r.pick([0x80, 0] as [UInt8])
                    attributes.append { w in w.append(STUN.Attribute.evenPort, length: 1) { $0.storeBytes(of: v, as: UInt8.self) } }
                case 5:
                    let t = r.byte() % 2 == 0 ? lastToken : r.take(8)
                    attributes.append { w in t.withUnsafeBytes { w.append(STUN.Attribute.reservationToken, bytes: $0) } }
                case 6, 7:
                    let type = r.pick([STUN.Attribute.requestedAddressFamily, STUN.Attribute.additionalAddressFamily])
                    let f = r.pick([1 << 24, 2 << 24, 3 << 24] as [UInt32])
                    attributes.append { $0.append(type, uint32: f) }
                case 8:
                    attributes.append { $0.append(STUN.Attribute.dontFragment, bytes: UnsafeRawBufferPointer(start: nil, count: 0)) }
                case 9:
                    attributes.append { $0.append(0x7FFF, uint32: 0) }  // unknown, comprehension-required
                case 10:
                    let d = r.blob()
                    attributes.append { w in d.withUnsafeBytes { w.append(STUN.Attribute.data, bytes: $0) } }
                default:
                    let t = r.u16(), v = r.blob()
                    attributes.append { w in v.withUnsafeBytes { w.append(t, bytes: $0) } }
                }
            }
            let auth = r.byte() % 8
            let integrity = r.byte() % 3
            let fingerprint = r.byte() % 2 == 0
            var username = "", password = ""
            switch auth {
            case 0, 1, 2: (username, password) = r.pick(users)
            case 3: username = "\(wall + UInt64(r.byte()) * 60):alice"; password = Crypto.restPassword(secret: secret, username: username)
            case 4: username = "\(wall - 1):alice"; password = Crypto.restPassword(secret: secret, username: username)
            case 5: (username, password) = ("alice", "wrong")
            case 6: (username, password) = (String(decoding: r.blob(), as: UTF8.self), "x")
            default: break  // no credentials
            }
            usernames.insert(username)
            let nonce = r.byte() % 16 == 0 ? String(decoding: r.blob(), as: UTF8.self) : nonces[c]
            let tid = TransactionID(high: r.u32(), low: UInt64(r.u32()))
            let msg = STUNWriter.build(method: method, class: .request, transactionID: tid) { w in
                for a in attributes { a(&w) }
                if !username.isEmpty {
                    w.append(STUN.Attribute.username, string: username)
                    w.append(STUN.Attribute.realm, string: realm)
                    w.append(STUN.Attribute.nonce, string: nonce)
                    let key = CredentialStore.longTermKey(username: username, realm: realm, password: password)
                    key.withUnsafeBytes { k in
                        if integrity == 0 { w.appendMessageIntegrity(key: k) }
                        if integrity == 1 { w.appendMessageIntegritySHA256(key: k) }
                    }
                }
                if fingerprint { w.appendFingerprint() }
            }
            handle(msg, client: c)
        }

        while !r.atEnd {
            let c = Int(r.byte()) % clients.count
            switch r.byte() % 10 {
            case 0, 1, 2:
                request(r.pick([STUN.Method.allocate, STUN.Method.refresh, STUN.Method.createPermission, STUN.Method.channelBind,
                                STUN.Method.binding, STUN.Method.send, 0x00B]), client: c)
            case 3:
                handle(r.blob(), client: c)
            case 4:
                let p = r.pick(peers), d = r.blob()
                handle(STUNWriter.build(method: STUN.Method.send, class: .indication) { w in
                    w.append(STUN.Attribute.xorPeerAddress, xorAddress: p)
                    d.withUnsafeBytes { w.append(STUN.Attribute.data, bytes: $0) }
                }, client: c)
            case 5:
                let channel = r.pick([0x4000, 0x4001, 0x7FFF, r.u16()] as [UInt16])
                if let (handle, peer) = server.channelTarget(client: clients[c], channel: channel, length: Int(r.u16()), now: now) {
                    require(relays.open[handle] != nil, "ChannelData goes out through an open relay")
                    require(server.policy.permits(peer: peer, live: server.relayPorts), "ChannelData reaches only a permitted peer")
                }
            case 6:
                // A relay that serves an allocation, chosen by the input.
                guard let (slot, generation) = relays.open.sorted(by: { $0.key.slot < $1.key.slot })
                    .dropFirst(Int(r.byte()) % max(1, relays.open.count)).first?.value else { break }
                let generation2 = r.byte() % 8 == 0 ? generation &+ 1 : generation
                switch server.peerRoute(slot: slot, generation: generation2, peer: r.pick(peers), length: Int(r.u16()), now: now) {
                case .drop:
                    break
                case .channel(let channel, let client, let via):
                    require(channel >= 0x4000 && channel <= 0x7FFF, "a bound channel has a channel number")
                    require(clients.contains(ClientKey(address: client, transport: via)), "peer data goes to a known client")
                case .indication(let client, let via):
                    require(clients.contains(ClientKey(address: client, transport: via)), "peer data goes to a known client")
                }
            case 7:
                let seconds = UInt64(r.u16() % 1200)
                now += seconds * 1_000_000_000 + UInt64(r.byte()) * 1_000_000
                wall += seconds
                server.sweep(now: now)
            case 8:
                if r.byte() % 2 == 0 {
                    server.clientGone(clients[c], now: now)
                } else {
                    let user = r.pick(["alice", "bob", ""])
                    let before = server.activeAllocations
                    let ended = server.endAllocations(now: now) { $0.user == user }
                    require(server.activeAllocations == before - ended, "ending by user removes exactly what it counts")
                }
            default:
                let secrets = r.byte() % 2 == 0 ? [secret] : []
                server.update(credentials: CredentialStore(realm: realm, users: r.byte() % 2 == 0 ? ["alice": .password("wonderland")] : [:],
                                                           secrets: secrets),
                              policy: r.byte() % 2 == 0 ? PeerPolicy() : PeerPolicy(allow: [CIDR("127.0.0.0/8")!]))
            }
            require(server.activeAllocations <= settings.maxAllocations, "allocations stay within the cap")
        }
        // Shutdown, and reservations nobody redeemed expire: nothing may be left open.
        let live = server.activeAllocations
        let endedBefore = ends
        server.closeAll(now: now)
        require(ends == endedBefore + live, "shutdown writes one record per live allocation")
        server.sweep(now: now + 3_600_000_000_000)
        require(server.activeAllocations == 0, "closeAll leaves no allocation")
        require(relays.open.isEmpty, "every relayed socket is closed in the end (left: \(relays.open.keys.map(\.slot).sorted()))")
        require(relays.reserved.isEmpty, "every reservation is adopted or closed in the end (left: \(relays.reserved.sorted()))")
        for u in usernames {
            require(shared.reserveUserSlot(u, limit: 1), "every user quota slot of \(u) is given back")
            shared.releaseUserSlot(u)
        }
    }
}
