import Testing
import FerryCore
import FerryWire
@testable import FerryRelay

/// The kernel's table as the tests see it: what ferryd put there, and counters the test bumps
/// as the XDP program would.
struct FakeFlowTable: RelayFlowTable {
    var entries: [RelayFastPath.Key: RelayFastPath.Entry] = [:]
    var counters: [UInt32: (packets: UInt64, bytes: UInt64)] = [:]
    var capacity = Int.max
    var writes = 0

    mutating func set(_ key: RelayFastPath.Key, _ entry: RelayFastPath.Entry) -> Bool {
        guard entries[key] != nil || entries.count < capacity else { return false }
        entries[key] = entry
        writes += 1
        return true
    }
    mutating func remove(_ key: RelayFastPath.Key) { entries[key] = nil }
    func read(counter: UInt32) -> (packets: UInt64, bytes: UInt64) { counters[counter] ?? (0, 0) }
    mutating func reset(counter: UInt32) { counters[counter] = (0, 0) }

    /// The kernel forwards `n` packets of `size` from `source` with `index`: what the XDP program does.
    @discardableResult
    mutating func forward(_ source: SocketAddress, _ index: UInt32, n: UInt64 = 1, size: UInt64 = 100) -> SocketAddress? {
        guard let e = entries[RelayFastPath.Key(source: source, index: index)] else { return nil }
        let c = counters[e.counter] ?? (0, 0)
        counters[e.counter] = (c.packets + n, c.bytes + n * size)
        return e.dest
    }
}

@Suite struct FastPath {
    var a = TestPeer("203.0.113.1:51820"), b = TestPeer("198.51.100.2:40000"), c = TestPeer("192.0.2.3:51820")

    /// Every kernel entry is a packet user space would forward to the same place (the kernel
    /// never forwards where user space would not), and every UDP-to-UDP IPv4 index user space
    /// forwards by is in the kernel (nothing forwardable stays slow).
    func expectMirrors(_ s: RelaySessions, _ table: FakeFlowTable, sourceLocation: SourceLocation = #_sourceLocation) {
        for (key, entry) in table.entries {
            var copy = s
            #expect(copy.route(WG.data(receiver: key.index), from: key.source, at: 150) == .forward(entry.dest), sourceLocation: sourceLocation)
        }
        for (k, dest) in s.byIndex {
            let slot = s.slots[Int(dest >> 1)]
            let to = slot[Int(dest & 1)].address
            guard slot.active, k.source.port != 0, to.port != 0 else { continue }
            #expect(table.entries[RelayFastPath.Key(source: k.source, index: k.index)]?.dest == to, sourceLocation: sourceLocation)
        }
    }

    @Test func aHandshakePutsBothDirectionsInTheKernelAndUnbindTakesThemOut() {
        var s = bound([(a, b)], mirrorsFastPath: true)
        var fast = RelayFastPath(), table = FakeFlowTable()
        let none = fast.sync(&s, table: &table)
        #expect(none == (0, 0))
        #expect(table.entries.isEmpty, "bound but no handshake: nothing to forward by")
        let (ia, ib) = handshake(&s, a, b)
        _ = fast.sync(&s, table: &table)
        #expect(table.entries.count == 2)
        do { let got = table.forward(a.address, ib); #expect(got == b.address) }
        do { let got = table.forward(b.address, ia); #expect(got == a.address) }
        do { let got = table.forward(c.address, ib); #expect(got == nil, "another source with the same index is not a's flow") }
        expectMirrors(s, table)
        let unbound = s.unbind(network: "acme", key: a.wg, partner: b.wg)
        #expect(unbound)
        _ = fast.sync(&s, table: &table)
        #expect(table.entries.isEmpty)
        #expect(fast.count == 0)
    }

    @Test func expiryRebindingAndForgottenIndicesLeaveTheKernelInTheSameSync() {
        var s = bound([(a, b)], mirrorsFastPath: true)
        var fast = RelayFastPath(), table = FakeFlowTable()
        let (ia, ib) = handshake(&s, a, b)
        _ = fast.sync(&s, table: &table)
        // b's NAT moved it: a's packets now go to b's new address; b's old source forwards nothing.
        var moved = b
        moved.address = SocketAddress("198.51.100.2:40001")!
        let rebound = s.bind(network: "acme", key: b.wg, partner: a.wg, address: moved.address, now: 110)
        #expect(rebound == .active)
        _ = fast.sync(&s, table: &table)
        do { let got = table.forward(a.address, ib); #expect(got == moved.address) }
        do { let got = table.forward(b.address, ia); #expect(got == nil) }
        do { let got = table.forward(moved.address, ia); #expect(got == a.address) }
        expectMirrors(s, table)
        // Idle past the timeout with no kernel traffic read back: unbound, out of the kernel.
        s.sweep(now: 110 + s.limits.idleTimeout + 1)
        _ = fast.sync(&s, table: &table)
        #expect(table.entries.isEmpty)
    }

    @Test func kernelTrafficIsReadBackIntoTheSessionSoItDoesNotExpire() {
        var s = bound([(a, b)], mirrorsFastPath: true)
        var fast = RelayFastPath(), table = FakeFlowTable()
        let (ia, ib) = handshake(&s, a, b)
        _ = fast.sync(&s, table: &table)
        let packetsBefore = s.slots[0].packets
        var t: UInt32 = 100, seconds: UInt64 = 0
        // Only the kernel sees the data for longer than the idle timeout; each second ferryd reads it back.
        while t < 100 + s.limits.idleTimeout + 30 {
            t += 1
            seconds += 1
            _ = table.forward(a.address, ib, n: 3)
            _ = table.forward(b.address, ia, n: 2)
            let got = fast.collect(&s, table: &table, now: UInt64(t) * 1_000_000_000)
            #expect(got == (5, 500))
            s.sweep(now: t)
        }
        #expect(s.activeCount == 1, "the kernel's traffic kept both ends alive")
        #expect(s.slots[0].packets == packetsBefore + 5 * seconds)
        expectMirrors(s, table)
    }

    @Test func whatTheKernelForwardedIsCountedWhenTheSessionLeaves() {
        var s = bound([(a, b)], mirrorsFastPath: true)
        var fast = RelayFastPath(), table = FakeFlowTable()
        let (_, ib) = handshake(&s, a, b)
        _ = fast.sync(&s, table: &table)
        _ = table.forward(a.address, ib, n: 7)
        s.unbindAll(at: a.address)
        let left = fast.sync(&s, table: &table)
        #expect(left == (7, 700))
        #expect(table.entries.isEmpty)
    }

    @Test func streamEndsAndIPv6StayInUserSpace() {
        let stream = RelayStreamEnd.address(worker: 1, connection: ConnectionID(9))
        var s = RelaySessions(limits: RelaySessions.Limits())
        s.mirrorsFastPath = true
        _ = s.bind(network: "acme", key: a.wg, partner: b.wg, address: a.address, now: 100)
        _ = s.bind(network: "acme", key: b.wg, partner: a.wg, address: stream, now: 100)
        var fast = RelayFastPath(), table = FakeFlowTable()
        var streamB = b
        streamB.address = stream
        _ = handshake(&s, a, streamB)
        _ = fast.sync(&s, table: &table)
        #expect(table.entries.isEmpty)
        let v6 = TestPeer("[2001:db8::1]:51820")
        var s6 = bound([(v6, b)], mirrorsFastPath: true)
        _ = handshake(&s6, v6, b)
        _ = fast.sync(&s6, table: &table)
        #expect(table.entries.isEmpty)
    }

    @Test func aSessionOverItsBandwidthLeavesTheKernelUntilItsBucketIsFull() {
        var limits = RelaySessions.Limits()
        limits.bandwidth = 10_000
        limits.burst = 20_000
        var s = bound([(a, b)], limits: limits, mirrorsFastPath: true)
        var fast = RelayFastPath(), table = FakeFlowTable()
        let (_, ib) = handshake(&s, a, b)
        _ = fast.sync(&s, table: &table)
        #expect(table.entries.count == 2)
        _ = table.forward(a.address, ib, n: 400, size: 100)  // 40 kB in a second: over the burst
        _ = fast.collect(&s, table: &table, now: 101_000_000_000)
        #expect(table.entries.isEmpty, "over its bandwidth: user space holds it to the limit")
        var t: UInt64 = 101
        while table.entries.isEmpty && t < 200 {
            t += 1
            _ = fast.collect(&s, table: &table, now: t * 1_000_000_000)
        }
        // 20 kB owed, then a full 20 kB burst earned at 10 kB/s: four seconds.
        #expect(t == 105)
        #expect(table.entries.count == 2)
        expectMirrors(s, table)
    }

    @Test func aFullKernelTableLeavesTheRestInUserSpaceAndCountsIt() {
        var s = bound([(a, b), (c, b)], mirrorsFastPath: true)
        var fast = RelayFastPath(), table = FakeFlowTable()
        table.capacity = 2
        _ = handshake(&s, a, b)
        _ = handshake(&s, c, b)
        _ = fast.sync(&s, table: &table)
        #expect(table.entries.count == 2)
        #expect(fast.refused == 2)
        for (key, entry) in table.entries {
            var copy = s
            #expect(copy.route(WG.data(receiver: key.index), from: key.source, at: 150) == .forward(entry.dest))
        }
    }

    /// Random binds, handshakes, rebinds, unbinds and sweeps: after each sync the kernel holds
    /// exactly the forwardable part of the sessions.
    @Test func theKernelTableFollowsAnySequenceOfEvents() {
        var rng = SplitMix64(seed: 22)
        let peers = (0..<6).map { TestPeer("10.0.0.\($0 + 1):\(50000 + $0)") }
        var s = RelaySessions(limits: RelaySessions.Limits())
        s.mirrorsFastPath = true
        var fast = RelayFastPath(), table = FakeFlowTable()
        var now: UInt32 = 100, peak = 0
        for step in 0..<3000 {
            let x = Int(rng.next() % 6), y = Int(rng.next() % 6)
            guard x != y else { continue }
            var px = peers[x]
            switch rng.next() % 10 {
            case 0...2:
                _ = s.bind(network: "acme", key: px.wg, partner: peers[y].wg, address: px.address, now: now)
            case 3:
                px.address = SocketAddress(ip: px.address.ip, port: px.address.port &+ UInt16(rng.next() % 3))
                _ = s.bind(network: "acme", key: px.wg, partner: peers[y].wg, address: px.address, now: now)
            case 4:
                s.unbind(network: "acme", key: px.wg, partner: peers[y].wg)
            case 5:
                now += UInt32(rng.next() % 90)
                s.sweep(now: now)
            default:
                let ix = UInt32(truncatingIfNeeded: rng.next()), iy = UInt32(truncatingIfNeeded: rng.next())
                for from in s.boundAddresses where from.port == px.address.port || rng.next() % 4 == 0 {
                    _ = s.route(WG.initiation(sender: ix, to: peers[y].key), from: from, at: now)
                    for to in s.boundAddresses { _ = s.route(WG.response(sender: iy, receiver: ix, to: px.key), from: to, at: now) }
                }
            }
            _ = fast.sync(&s, table: &table)
            peak = max(peak, table.entries.count)
            if step % 50 == 0 { expectMirrors(s, table) }
        }
        expectMirrors(s, table)
        #expect(peak >= 6 && table.writes > 100, "the sequence exercised the table (peak \(peak), \(table.writes) writes)")
    }
}
