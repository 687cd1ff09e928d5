import Testing
import FerryCore
import FerryWire
import FerryTURN

/// A RelayProvider that hands out numbered fake sockets (relay ids with slot = the number,
/// generation 1; a reservation's token is the number too) and remembers what happened.
final class FakeRelays: RelayProvider {
    var nextHandle: Int32 = 100
    var nextPort: UInt16 = 50000
    var open: [Int32: UInt16] = [:]
    var closed: [Int32] = []
    var dontFragment: [Int32] = []
    var failOpen = false

    static func id(_ n: Int32) -> RelayID { RelayID(slot: n, generation: 1) }

    func openRelay(ip: IPAddress, evenPort: Bool, slot: Int32, generation: UInt32) -> (relay: RelayID, port: UInt16)? {
        if failOpen { return nil }
        if evenPort && nextPort % 2 == 1 { nextPort += 1 }
        defer { nextHandle += 1; nextPort += 2 }
        open[nextHandle] = nextPort
        return (FakeRelays.id(nextHandle), nextPort)
    }

    func openReserved(ip: IPAddress, port: UInt16) -> ReservedRelay? {
        defer { nextHandle += 1 }
        open[nextHandle] = port
        return ReservedRelay(token: nextHandle)
    }

    func adopt(_ reserved: ReservedRelay, slot: Int32, generation: UInt32) -> RelayID? { FakeRelays.id(reserved.token) }
    func closeRelay(_ relay: RelayID) { closed.append(relay.slot); open[relay.slot] = nil }
    func closeReserved(_ reserved: ReservedRelay) { closed.append(reserved.token); open[reserved.token] = nil }
    func setDontFragment(_ relay: RelayID) { dontFragment.append(relay.slot) }
}

/// Drives a TURNServer with a fake clock, as a client would.
final class Harness {
    let relays = FakeRelays()
    let metrics = CounterBlock.standalone()
    let counters = TURNCounters.sequential()
    let server: TURNServer
    var now: UInt64 = 1_000_000_000_000
    var wallNow: UInt64 = 1_800_000_000
    var out = [UInt8](repeating: 0, count: 1500)
    let client = SocketAddress("203.0.113.5:40000")!
    let realm = "ferry.test"

    init(settings: (inout TURNSettings) -> Void = { _ in }, secrets: [String] = ["s3cret"], policy: PeerPolicy = PeerPolicy(),
         shared: TURNShared = TURNShared()) {
        var s = TURNSettings()
        s.realm = realm
        s.relayIPv4 = IPAddress("198.51.100.1")
        s.maxAllocations = 8
        settings(&s)
        let creds = CredentialStore(realm: realm, users: ["alice": .password("wonderland"), "bob": .password("builder")], secrets: secrets)
        server = TURNServer(settings: s, credentials: creds, nonces: NonceCodec(secret: Array("k".utf8), lifetimeSeconds: 600),
                            policy: policy, relays: relays, shared: shared, counters: counters, metrics: metrics)
    }

    deinit { metrics.base.deallocate() }

    struct Reply {
        let bytes: [UInt8]
        var code: Int? { bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().errorCode()?.code } }
        var isSuccess: Bool { bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().messageClass == .success } }
        func string(_ t: UInt16) -> String? { bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().string(t) } }
        func uint32(_ t: UInt16) -> UInt32? { bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().uint32(t) } }
        func address(_ t: UInt16) -> SocketAddress? { bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().xorAddress(t) } }
        func all(_ t: UInt16) -> [SocketAddress] { bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().allXORAddresses(t)! } }
        func has(_ t: UInt16) -> Bool { bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().has(t) } }
        func verifies(_ key: [UInt8]) -> Bool { bytes.withUnsafeBytes { m in key.withUnsafeBytes { try! STUNMessage.parse(m).get().verifyIntegrity(key: $0) } } }
    }

    /// Sends raw bytes; returns the reply, if any.
    func send(_ bytes: [UInt8], from: SocketAddress? = nil) -> (reply: Reply?, action: TURNServer.Action) {
        bytes.withUnsafeBytes { raw in
            let msg = try! STUNMessage.parse(raw).get()
            let action = out.withUnsafeMutableBytes { o in
                server.handle(msg, from: ClientKey(address: from ?? client, transport: .udp(listener: 0)), now: now, wallNow: wallNow, out: o)
            }
            if case .reply(let n) = action { return (Reply(bytes: Array(out[0..<n])), action) }
            return (nil, action)
        }
    }

    var nonce = ""

    /// A request with long-term credentials (username/password), after fetching a nonce.
    func request(_ method: UInt16, user: String = "alice", password: String = "wonderland", realm: String? = nil,
                 tid: TransactionID = .random(), from: SocketAddress? = nil, sha256: Bool = false, retryStale: Bool = true,
                 _ body: (inout STUNWriter) -> Void = { _ in }) -> Reply? {
        if nonce.isEmpty {
            let r = send(STUNWriter.build(method: method, class: .request) { w in body(&w) }, from: from).reply
            nonce = r?.string(STUN.Attribute.nonce) ?? ""
        }
        let r = realm ?? self.realm
        let key = CredentialStore.longTermKey(username: user, realm: r, password: password)
        let msg = STUNWriter.build(method: method, class: .request, transactionID: tid) { w in
            body(&w)
            w.append(STUN.Attribute.username, string: user)
            w.append(STUN.Attribute.realm, string: r)
            w.append(STUN.Attribute.nonce, string: nonce)
            key.withUnsafeBytes { sha256 ? w.appendMessageIntegritySHA256(key: $0) : w.appendMessageIntegrity(key: $0) }
            w.appendFingerprint()
        }
        let reply = send(msg, from: from).reply
        // Like a real client: on 438, take the new nonce and try once more.
        if retryStale, reply?.code == 438, let fresh = reply?.string(STUN.Attribute.nonce) {
            nonce = fresh
            return request(method, user: user, password: password, realm: realm, tid: tid, from: from, sha256: sha256,
                           retryStale: false, body)
        }
        return reply
    }

    func allocate(user: String = "alice", password: String = "wonderland", tid: TransactionID = .random(), from: SocketAddress? = nil,
                  _ extra: (inout STUNWriter) -> Void = { _ in }) -> Reply? {
        request(STUN.Method.allocate, user: user, password: password, tid: tid, from: from) { w in
            w.append(STUN.Attribute.requestedTransport, uint32: 17 << 24)
            extra(&w)
        }
    }

    func count(_ id: CounterID) -> UInt64 { metrics.load(id) }
    func drops(_ d: TURNCounters.Drop) -> UInt64 { count(counters.drops[d]) }
    func advance(seconds: UInt64) {
        now += seconds * 1_000_000_000
        wallNow += seconds
    }
}

@Suite struct TURNBinding {
    @Test func bindingAnswersWithSourceAddress() {
        let h = Harness()
        let r = h.send(STUNWriter.build(method: STUN.Method.binding, class: .request) { $0.appendFingerprint() }).reply!
        #expect(r.isSuccess)
        #expect(r.address(STUN.Attribute.xorMappedAddress) == h.client)
        #expect(r.string(STUN.Attribute.software) == "ferry")
        #expect(r.bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().fingerprintOffset } > 0)
    }

    @Test func unknownComprehensionRequiredAttributeIs420() {
        let h = Harness()
        let r = h.send(STUNWriter.build(method: STUN.Method.binding, class: .request) { w in
            w.append(0x7777, uint32: 1)
            w.append(0xC001, uint32: 1)   // comprehension-optional: ignored
        }).reply!
        #expect(r.code == 420)
        let unknown = r.bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().attribute(STUN.Attribute.unknownAttributes).map { Array($0) } }
        #expect(unknown == [0x77, 0x77])
    }

    @Test func responsesAndUnknownMethodsFromClientsAreHandled() {
        let h = Harness()
        #expect(h.send(STUNWriter.build(method: STUN.Method.binding, class: .success) { _ in }).reply == nil)
        #expect(h.send(STUNWriter.build(method: 0x0FF, class: .request) { _ in }).reply?.code == 400)
    }
}

@Suite struct TURNAuthentication {
    @Test func unauthenticatedAllocateGets401WithRealmAndNonce() {
        let h = Harness()
        let r = h.send(STUNWriter.build(method: STUN.Method.allocate, class: .request) { w in
            w.append(STUN.Attribute.requestedTransport, uint32: 17 << 24)
        }).reply!
        #expect(r.code == 401)
        #expect(r.string(STUN.Attribute.realm) == "ferry.test")
        #expect(r.string(STUN.Attribute.nonce)?.count == 40)
        #expect(h.relays.open.isEmpty)
    }

    @Test func wrongPasswordIs401AndCreatesNothing() {
        let h = Harness()
        let r = h.allocate(password: "nope")!
        #expect(r.code == 401)
        #expect(h.relays.open.isEmpty)
        #expect(h.server.activeAllocations == 0)
        #expect(h.count(h.counters.authFailures[.badIntegrity]) == 1)
    }

    @Test func unknownUserAndWrongRealm() {
        let h = Harness()
        #expect(h.allocate(user: "mallory", password: "x")?.code == 401)
        #expect(h.request(STUN.Method.allocate, realm: "other.realm")?.code == 401)
        #expect(h.count(h.counters.authFailures[.unknownUser]) == 1)
        #expect(h.count(h.counters.authFailures[.wrongRealm]) == 1)
    }

    @Test func integrityWithoutUsernameIs400() {
        let h = Harness()
        let key = [UInt8](repeating: 1, count: 16)
        let msg = STUNWriter.build(method: STUN.Method.allocate, class: .request) { w in
            key.withUnsafeBytes { w.appendMessageIntegrity(key: $0) }
        }
        #expect(h.send(msg).reply?.code == 400)
    }

    @Test func staleNonceIs438AndRetrySucceeds() {
        let h = Harness()
        #expect(h.allocate()?.isSuccess == true)
        h.advance(seconds: 601)
        let stale = h.request(STUN.Method.refresh, retryStale: false)!
        #expect(stale.code == 438)
        let fresh = stale.string(STUN.Attribute.nonce)!
        #expect(fresh != h.nonce)
        h.nonce = fresh
        #expect(h.request(STUN.Method.refresh)?.isSuccess == true)
    }

    @Test func forgedNonceIs438() {
        let h = Harness()
        _ = h.allocate()
        h.nonce = String(h.nonce.reversed())
        #expect(h.request(STUN.Method.refresh, retryStale: false)?.code == 438)
    }

    @Test func nonceIsBoundToClientAddress() {
        let h = Harness()
        _ = h.allocate()
        // The same nonce from another address is not valid there.
        #expect(h.request(STUN.Method.allocate, from: SocketAddress("203.0.113.99:1")!, retryStale: false)?.code == 438)
    }

    @Test func successIsSignedWithTheRequestKey() {
        let h = Harness()
        let r = h.allocate()!
        #expect(r.verifies(CredentialStore.longTermKey(username: "alice", realm: h.realm, password: "wonderland")))
    }

    @Test func messageIntegritySHA256IsAccepted() {
        let h = Harness()
        let r = h.request(STUN.Method.allocate, sha256: true) { $0.append(STUN.Attribute.requestedTransport, uint32: 17 << 24) }!
        #expect(r.isSuccess)
        #expect(r.bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().integritySHA256Offset } > 0)
    }

    @Test func restCredentials() {
        let h = Harness(secrets: ["old", "s3cret"])
        let user = "\(h.wallNow + 3600):peer1"
        let password = Crypto.restPassword(secret: "s3cret", username: user)
        #expect(h.allocate(user: user, password: password)?.isSuccess == true)
        // Signed by the rotated-out secret: still accepted while listed.
        let user2 = "\(h.wallNow + 3600)"
        #expect(h.allocate(user: user2, password: Crypto.restPassword(secret: "old", username: user2),
                           from: SocketAddress("203.0.113.5:40001")!)?.isSuccess == true)
    }

    @Test func expiredRestCredentialIsRefused() {
        let h = Harness()
        let user = "\(h.wallNow - 1):peer1"
        let r = h.allocate(user: user, password: Crypto.restPassword(secret: "s3cret", username: user))!
        #expect(r.code == 401)
        #expect(h.count(h.counters.authFailures[.expired]) == 1)
        #expect(h.server.activeAllocations == 0)
    }

    @Test func unauthorizedAnswersAreRateLimitedPerSource() {
        let h = Harness { $0.unauthorizedPerSecond = 1; $0.unauthorizedBurst = 3 }
        let probe = STUNWriter.build(method: STUN.Method.allocate, class: .request) { $0.append(STUN.Attribute.requestedTransport, uint32: 17 << 24) }
        let answered = (0..<10).filter { _ in h.send(probe).reply != nil }.count
        #expect(answered == 3)
        #expect(h.drops(.rateLimited) == 7)
        #expect(h.send(probe, from: SocketAddress("203.0.113.77:1")!).reply?.code == 401, "other sources are not affected")
        h.advance(seconds: 2)
        #expect(h.send(probe).reply?.code == 401, "the bucket refills")
    }

    @Test func everyUnauthenticatedErrorShareTheLimit() {
        // 400 (unknown method), 420 (unknown comprehension-required attribute) and 401 answers
        // amplify like a challenge does: one bucket per source for all of them.
        let h = Harness { $0.unauthorizedPerSecond = 1; $0.unauthorizedBurst = 3 }
        let unknownMethod = STUNWriter.build(method: 0x0FF, class: .request) { _ in }
        let unknownAttribute = STUNWriter.build(method: STUN.Method.allocate, class: .request) { $0.append(0x7FF0, uint32: 1) }
        let challenge = STUNWriter.build(method: STUN.Method.allocate, class: .request) { $0.append(STUN.Attribute.requestedTransport, uint32: 17 << 24) }
        #expect(h.send(unknownMethod).reply?.code == 400)
        #expect(h.send(unknownAttribute).reply?.code == 420)
        #expect(h.send(challenge).reply?.code == 401)
        for probe in [unknownMethod, unknownAttribute, challenge] { #expect(h.send(probe).reply == nil) }
        #expect(h.drops(.rateLimited) == 3)
        #expect(h.send(STUNWriter.build(method: STUN.Method.binding, class: .request) { _ in }).reply?.isSuccess == true,
                "Binding is the service itself, not limited")
    }
}

@Suite struct TURNAllocate {
    @Test func allocateGivesRelayedAndMappedAddresses() {
        let h = Harness()
        let r = h.allocate()!
        #expect(r.isSuccess)
        #expect(r.address(STUN.Attribute.xorRelayedAddress) == SocketAddress("198.51.100.1:50000"))
        #expect(r.address(STUN.Attribute.xorMappedAddress) == h.client)
        #expect(r.uint32(STUN.Attribute.lifetime) == 600)
        #expect(h.server.activeAllocations == 1)
    }

    @Test func missingOrWrongTransport() {
        let h = Harness()
        #expect(h.request(STUN.Method.allocate)?.code == 400)
        #expect(h.request(STUN.Method.allocate) { $0.append(STUN.Attribute.requestedTransport, uint32: 6 << 24) }?.code == 442)
    }

    @Test func secondAllocateIs437AndRetransmissionIsAnsweredAgain() {
        let h = Harness()
        let tid = TransactionID.random()
        let first = h.allocate(tid: tid)!
        let again = h.allocate(tid: tid)!
        #expect(again.isSuccess)
        #expect(again.address(STUN.Attribute.xorRelayedAddress) == first.address(STUN.Attribute.xorRelayedAddress))
        #expect(h.allocate()?.code == 437)
        #expect(h.relays.open.count == 1)
    }

    @Test func lifetimeIsClampedBetweenDefaultAndMaximum() {
        let h = Harness { $0.maxLifetime = 1200 }
        #expect(h.allocate { $0.append(STUN.Attribute.lifetime, uint32: 5000) }?.uint32(STUN.Attribute.lifetime) == 1200)
        let other = SocketAddress("203.0.113.5:40001")!
        #expect(h.allocate(from: other) { $0.append(STUN.Attribute.lifetime, uint32: 30) }?.uint32(STUN.Attribute.lifetime) == 600)
    }

    @Test func perUserQuotaIs486AndCapacityIs508() {
        let h = Harness { $0.maxAllocationsPerUser = 2; $0.maxAllocations = 3 }
        for port in 1...2 { #expect(h.allocate(from: SocketAddress("203.0.113.5:\(port)")!)?.isSuccess == true) }
        #expect(h.allocate(from: SocketAddress("203.0.113.5:3")!)?.code == 486)
        #expect(h.allocate(user: "bob", password: "builder", from: SocketAddress("203.0.113.5:4")!)?.isSuccess == true)
        #expect(h.allocate(user: "bob", password: "builder", from: SocketAddress("203.0.113.5:5")!)?.code == 508)
        #expect(h.drops(.quota) == 2)
    }

    @Test func relayExhaustionIs508() {
        let h = Harness()
        h.relays.failOpen = true
        #expect(h.allocate()?.code == 508)
        #expect(h.server.activeAllocations == 0)
    }

    @Test func addressFamilies() {
        let h = Harness()
        #expect(h.allocate { $0.append(STUN.Attribute.requestedAddressFamily, uint32: 0x02 << 24) }?.code == 440)
        #expect(h.allocate { $0.append(STUN.Attribute.requestedAddressFamily, uint32: 0x07 << 24) }?.code == 440)
        #expect(h.allocate {
            $0.append(STUN.Attribute.requestedAddressFamily, uint32: 0x01 << 24)
            $0.append(STUN.Attribute.additionalAddressFamily, uint32: 0x02 << 24)
        }?.code == 400)
        #expect(h.allocate { $0.append(STUN.Attribute.additionalAddressFamily, uint32: 0x01 << 24) }?.code == 400)
        // Dual allocation without IPv6 configured: IPv4 stands, ADDRESS-ERROR-CODE explains.
        let r = h.allocate { $0.append(STUN.Attribute.additionalAddressFamily, uint32: 0x02 << 24) }!
        #expect(r.isSuccess)
        #expect(r.all(STUN.Attribute.xorRelayedAddress).count == 1)
        #expect(r.has(STUN.Attribute.addressErrorCode))
    }

    @Test func dualStackAllocation() {
        let h = Harness { $0.relayIPv6 = IPAddress("2001:db8::1") }
        let r = h.allocate { $0.append(STUN.Attribute.additionalAddressFamily, uint32: 0x02 << 24) }!
        let relayed = r.all(STUN.Attribute.xorRelayedAddress)
        #expect(relayed.count == 2)
        #expect(relayed[0].ip.isIPv4 && !relayed[1].ip.isIPv4)
        let v6 = h.allocate(from: SocketAddress("203.0.113.5:2")!) { $0.append(STUN.Attribute.requestedAddressFamily, uint32: 0x02 << 24) }!
        #expect(v6.all(STUN.Attribute.xorRelayedAddress).map(\.ip) == [IPAddress("2001:db8::1")!])
    }

    @Test func evenPortWithReservation() {
        let h = Harness()
        h.relays.nextPort = 50001
        let r = h.allocate { $0.append(STUN.Attribute.evenPort, length: 1) { $0.storeBytes(of: UInt8(0x80), as: UInt8.self) } }!
        #expect(r.isSuccess)
        let port = r.address(STUN.Attribute.xorRelayedAddress)!.port
        #expect(port % 2 == 0)
        let token = r.bytes.withUnsafeBytes { try! STUNMessage.parse($0).get().attribute(STUN.Attribute.reservationToken).map { Array($0) } }!
        let second = h.allocate(from: SocketAddress("203.0.113.5:2")!) { w in
            token.withUnsafeBytes { w.append(STUN.Attribute.reservationToken, bytes: $0) }
        }!
        #expect(second.address(STUN.Attribute.xorRelayedAddress)?.port == port + 1)
        // A token works once.
        let third = h.allocate(from: SocketAddress("203.0.113.5:3")!) { w in
            token.withUnsafeBytes { w.append(STUN.Attribute.reservationToken, bytes: $0) }
        }!
        #expect(third.code == 508)
        #expect(h.allocate(from: SocketAddress("203.0.113.5:4")!) { w in
            token.withUnsafeBytes { w.append(STUN.Attribute.reservationToken, bytes: $0) }
            w.append(STUN.Attribute.evenPort, length: 1) { $0.storeBytes(of: UInt8(0), as: UInt8.self) }
        }?.code == 400)
    }

    @Test func dontFragmentIsApplied() {
        let h = Harness()
        #expect(h.allocate { $0.append(STUN.Attribute.dontFragment, length: 0) { _ in } }?.isSuccess == true)
        #expect(h.relays.dontFragment.count == 1)
    }
}

@Suite struct TURNRefreshPermissionsChannels {
    let peer = SocketAddress("192.0.2.10:7000")!

    @Test func refreshWithoutAllocationIs437AndOtherUserIs441() {
        let h = Harness()
        #expect(h.request(STUN.Method.refresh)?.code == 437)
        _ = h.allocate()
        #expect(h.request(STUN.Method.refresh, user: "bob", password: "builder")?.code == 441)
    }

    @Test func refreshZeroDeletesAndClosesTheRelay() {
        let h = Harness()
        _ = h.allocate()
        let r = h.request(STUN.Method.refresh) { $0.append(STUN.Attribute.lifetime, uint32: 0) }!
        #expect(r.isSuccess && r.uint32(STUN.Attribute.lifetime) == 0)
        #expect(h.server.activeAllocations == 0)
        #expect(h.relays.closed.count == 1)
        #expect(h.allocate()?.isSuccess == true, "the user slot was given back")
    }

    @Test func allocationsExpireInTheSweep() {
        let h = Harness()
        _ = h.allocate()
        h.advance(seconds: 599)
        h.server.sweep(now: h.now)
        #expect(h.server.activeAllocations == 1)
        h.advance(seconds: 2)
        h.server.sweep(now: h.now)
        #expect(h.server.activeAllocations == 0)
        #expect(h.relays.closed.count == 1)
        #expect(h.count(h.counters.allocationsExpired) == 1)
    }

    @Test func sweepWithUnlimitedUnauthorizedRate() {
        // unauthorized_per_second = 0 (no limit) once crashed the first sweep.
        let h = Harness { $0.unauthorizedPerSecond = 0 }
        _ = h.allocate()
        h.advance(seconds: 1)
        h.server.sweep(now: h.now)
        #expect(h.server.activeAllocations == 1)
    }

    @Test func createPermissionChecks() {
        let h = Harness()
        _ = h.allocate()
        #expect(h.request(STUN.Method.createPermission)?.code == 400)
        for denied in ["127.0.0.1:1", "[::ffff:10.0.0.1]:1", "169.254.169.254:80"] {
            // ::ffff:10.0.0.1 is an IPv6 address: with only an IPv4 relay it is a family mismatch first.
            let code = h.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: SocketAddress(denied)!) }?.code
            #expect(code == (denied.hasPrefix("[") ? 443 : 403), "\(denied)")
        }
        #expect(h.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: SocketAddress("[2001:db8::5]:1")!) }?.code == 443)
        #expect(h.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: peer) }?.isSuccess == true)
        #expect(h.drops(.deniedPeer) == 2)
    }

    @Test func permissionLimitIs508() {
        let h = Harness { $0.maxPermissionsPerAllocation = 2 }
        _ = h.allocate()
        for i in 1...2 {
            #expect(h.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: SocketAddress("192.0.2.\(i):1")!) }?.isSuccess == true)
        }
        #expect(h.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: SocketAddress("192.0.2.3:1")!) }?.code == 508)
        // Refreshing an existing one still works; after expiry, slots are reused.
        #expect(h.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: SocketAddress("192.0.2.1:9")!) }?.isSuccess == true)
        h.advance(seconds: 301)
        #expect(h.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: SocketAddress("192.0.2.3:1")!) }?.isSuccess == true)
    }

    @Test func channelRefusedFor508IsNotCountedAsBound() {
        let h = Harness { $0.maxPermissionsPerAllocation = 1 }
        _ = h.allocate()
        #expect(h.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: SocketAddress("192.0.2.1:1")!) }?.isSuccess == true)
        // A new peer IP needs a second permission, which the limit refuses: no channel is made.
        let refused = h.request(STUN.Method.channelBind) { w in
            w.append(STUN.Attribute.channelNumber, uint32: UInt32(0x4001) << 16)
            w.append(STUN.Attribute.xorPeerAddress, xorAddress: SocketAddress("192.0.2.2:1")!)
        }
        #expect(refused?.code == 508)
        #expect(h.count(h.counters.channelsBound) == 0)
        let bound = h.request(STUN.Method.channelBind) { w in
            w.append(STUN.Attribute.channelNumber, uint32: UInt32(0x4001) << 16)
            w.append(STUN.Attribute.xorPeerAddress, xorAddress: SocketAddress("192.0.2.1:7")!)
        }
        #expect(bound?.isSuccess == true)
        #expect(h.count(h.counters.channelsBound) == 1)
    }

    @Test func sendIndicationNeedsPermission() {
        let h = Harness()
        _ = h.allocate()
        let payload: [UInt8] = [1, 2, 3, 4, 5]
        let send = STUNWriter.build(method: STUN.Method.send, class: .indication) { w in
            w.append(STUN.Attribute.xorPeerAddress, xorAddress: peer)
            payload.withUnsafeBytes { w.append(STUN.Attribute.data, bytes: $0) }
        }
        if case .none = h.send(send).action {} else { Issue.record("relayed without permission") }
        #expect(h.drops(.noPermission) == 1)
        _ = h.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: peer) }
        guard case .relay(let handle, let to, let data) = h.send(send).action else {
            Issue.record("not relayed")
            return
        }
        #expect(handle == FakeRelays.id(100) && to == peer && Array(data) == payload)
        h.advance(seconds: 301)
        if case .none = h.send(send).action {} else { Issue.record("relayed after the permission expired") }
    }

    @Test func channelBindRules() {
        let h = Harness()
        _ = h.allocate()
        func bind(_ n: UInt16, _ p: SocketAddress) -> Harness.Reply? {
            h.request(STUN.Method.channelBind) { w in
                w.append(STUN.Attribute.channelNumber, uint32: UInt32(n) << 16)
                w.append(STUN.Attribute.xorPeerAddress, xorAddress: p)
            }
        }
        #expect(bind(0x3FFF, peer)?.code == 400)
        #expect(bind(0x8000, peer)?.code == 400, "0x8000 and up are reserved (RFC 5766 §11)")
        #expect(bind(0x4000, SocketAddress("10.1.1.1:5")!)?.code == 403)
        #expect(bind(0x4000, peer)?.isSuccess == true)
        #expect(bind(0x4000, peer)?.isSuccess == true, "rebinding the same pair refreshes")
        #expect(bind(0x4000, SocketAddress("192.0.2.11:7000")!)?.code == 400, "channel bound to another peer")
        #expect(bind(0x4001, peer)?.code == 400, "peer bound to another channel")
        // The binding installed a permission.
        #expect(h.server.table.pointee.hasPermission(0, peer.ip, now: h.now))
        // ChannelData from the client goes to the peer; unknown channels are dropped.
        let key = ClientKey(address: h.client, transport: .udp(listener: 0))
        #expect(h.server.channelTarget(client: key, channel: 0x4000, length: 100, now: h.now)?.peer == peer)
        #expect(h.server.channelTarget(client: key, channel: 0x4002, length: 100, now: h.now) == nil)
        #expect(h.drops(.noChannel) == 1)
        // After 600 s the channel is gone for data, but reserved 300 s more.
        h.advance(seconds: 601)
        #expect(h.server.channelTarget(client: key, channel: 0x4000, length: 100, now: h.now) == nil)
        #expect(bind(0x4000, SocketAddress("192.0.2.11:7000")!)?.code == 400)
        h.advance(seconds: 300)
        #expect(bind(0x4000, SocketAddress("192.0.2.11:7000")!)?.isSuccess == true)
    }

    @Test func strictChannelNumbersFollowRFC8656() {
        let h = Harness { $0.strictChannelNumbers = true }
        _ = h.allocate()
        let r = h.request(STUN.Method.channelBind) { w in
            w.append(STUN.Attribute.channelNumber, uint32: 0x5000 << 16)
            w.append(STUN.Attribute.xorPeerAddress, xorAddress: peer)
        }
        #expect(r?.code == 400)
        #expect(h.request(STUN.Method.channelBind) { w in
            w.append(STUN.Attribute.channelNumber, uint32: 0x4FFF << 16)
            w.append(STUN.Attribute.xorPeerAddress, xorAddress: peer)
        }?.isSuccess == true)
        // RFC 5766 §11: "0x4000 through 0x7FFF" — coturn's clients pick uniformly from all of it,
        // so 0x7FFF (refused before: about one turnutils_uclient run in a hundred failed) is fine.
        let lenient = Harness()
        _ = lenient.allocate()
        for (i, number) in [UInt32(0x7FFE), 0x7FFF].enumerated() {
            #expect(lenient.request(STUN.Method.channelBind) { w in
                w.append(STUN.Attribute.channelNumber, uint32: number << 16)
                w.append(STUN.Attribute.xorPeerAddress, xorAddress: SocketAddress("192.0.2.\(20 + i):9")!)
            }?.isSuccess == true, "channel \(number)")
        }
        #expect(lenient.request(STUN.Method.channelBind) { w in
            w.append(STUN.Attribute.channelNumber, uint32: 0x8000 << 16)
            w.append(STUN.Attribute.xorPeerAddress, xorAddress: SocketAddress("192.0.2.30:9")!)
        }?.code == 400, "0x8000 and up are reserved")
    }

    @Test func peerRouteUsesChannelOrIndication() {
        let h = Harness()
        _ = h.allocate()
        let gen = h.server.table.pointee.allocations[0].generation
        guard case .drop = h.server.peerRoute(slot: 0, generation: gen, peer: peer, length: 10, now: h.now) else {
            Issue.record("relayed without permission")
            return
        }
        _ = h.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: peer) }
        guard case .indication(let client, _) = h.server.peerRoute(slot: 0, generation: gen, peer: peer, length: 10, now: h.now) else {
            Issue.record("expected a Data indication")
            return
        }
        #expect(client == h.client)
        _ = h.request(STUN.Method.channelBind) { w in
            w.append(STUN.Attribute.channelNumber, uint32: 0x4005 << 16)
            w.append(STUN.Attribute.xorPeerAddress, xorAddress: peer)
        }
        guard case .channel(let n, _, _) = h.server.peerRoute(slot: 0, generation: gen, peer: peer, length: 10, now: h.now) else {
            Issue.record("expected ChannelData")
            return
        }
        #expect(n == 0x4005)
        guard case .drop = h.server.peerRoute(slot: 0, generation: gen &+ 1, peer: peer, length: 10, now: h.now) else {
            Issue.record("a stale generation must not be relayed")
            return
        }
    }

    @Test func bandwidthQuota() {
        let h = Harness { $0.bandwidthPerAllocation = 1000; $0.bandwidthBurst = 1000 }
        _ = h.allocate()
        _ = h.request(STUN.Method.createPermission) { $0.append(STUN.Attribute.xorPeerAddress, xorAddress: peer) }
        let gen = h.server.table.pointee.allocations[0].generation
        var passed = 0
        for _ in 0..<5 {
            if case .indication = h.server.peerRoute(slot: 0, generation: gen, peer: peer, length: 400, now: h.now) { passed += 1 }
        }
        #expect(passed == 2)
        #expect(h.drops(.quota) == 3)
        h.advance(seconds: 1)
        if case .indication = h.server.peerRoute(slot: 0, generation: gen, peer: peer, length: 400, now: h.now) {} else {
            Issue.record("the bucket refills")
        }
    }
}

/// The drop and auth-failure counters are arrays indexed by their reason enums: every reason has
/// its own slot and label, and the labels are the ones docs/metrics.md lists.
@Suite struct TURNReasonCounters {
    @Test func everyReasonHasItsOwnSlotAndLabel() {
        let c = TURNCounters.sequential()
        #expect(Set(TURNCounters.Drop.allCases.map { c.drops[$0] }).count == TURNCounters.Drop.allCases.count)
        #expect(Set(TURNCounters.AuthFailure.allCases.map { c.authFailures[$0] }).count == TURNCounters.AuthFailure.allCases.count)
        #expect(TURNCounters.Drop.allCases.map(\.label) == ["no_allocation", "no_permission", "no_channel", "denied_peer", "quota",
                                                             "rate_limited", "malformed", "send_error", "buffer_full"])
    }
}
