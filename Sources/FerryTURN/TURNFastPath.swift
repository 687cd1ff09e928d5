import FerryCore

/// TURN's kernel table (the XDP program's `channel_in4`, `channel_out4` and `channel_counts` maps).
public protocol ChannelFlowTable: KernelFlowTable where Key == TURNFastPath.Key, Entry == TURNFastPath.Entry {}

/// What the kernel fast path holds for one worker's TURN channels (docs/xdp.md), kept by ferryd
/// as the single source of truth. A bound channel is forwardable when its allocation is live,
/// its client is on UDP over IPv4, its peer is IPv4 with a live permission, permitted by the
/// policy and not one of the relay's own addresses (those stay with user space's per-packet
/// checks and the short circuit),
/// and the allocation is within its bandwidth. Each such channel has two entries: ChannelData
/// from the client to the peer (`toPeer`) and datagrams from the peer to the client (`toClient`).
///
/// Each entry carries its expiry (the first of the channel's, its permission's and its
/// allocation's), which the kernel checks per packet: a lapse stops forwarding at that
/// nanosecond, and the once-a-second `collect` then removes the entry. Every request that can
/// change what is forwardable marks its allocation (`TURNServer.fastPathDirty`: ChannelBind,
/// CreatePermission, Refresh, deletion, a reload), and `sync` makes that allocation's entries
/// what they should be before the next batch is read.
///
/// The kernel's forwarding is read back once a second per allocation and direction (one pair of
/// per-CPU counters per allocation, handed out from a pool): the allocation's own counts (its
/// session-log record and `/v1/allocations`), TURN's relayed metrics and its bandwidth bucket. An
/// allocation over its bandwidth leaves the fast path until its bucket is full again.
///
/// Ownership: the worker's thread (a value in its TURN service, like the allocations).
public struct TURNFastPath {
    public enum Key: Hashable, Sendable {
        /// ChannelData from `client` to the listener port `serverPort` on `channel`.
        case toPeer(client: SocketAddress, serverPort: UInt16, channel: UInt16)
        /// A datagram from `peer` to relayed port `relayPort`.
        case toClient(peer: SocketAddress, relayPort: UInt16)
    }

    public enum Entry: Equatable, Sendable {
        /// Sent to `peer` from `relay` (its IP unspecified: the route picks).
        case toPeer(relay: SocketAddress, peer: SocketAddress, counter: UInt32, expiry: UInt64)
        /// Sent to `client` from `server` (its IP unspecified: the route picks) as ChannelData on
        /// `channel`; only datagrams to `relayIP` (unless unspecified) are the relayed socket's.
        case toClient(client: SocketAddress, server: SocketAddress, relayIP: IPAddress, channel: UInt16, counter: UInt32, expiry: UInt64)
    }

    /// Installed entries and the allocation slot that owns each.
    private(set) var installed = InstalledEntries<Key, Entry, Int32>()
    private var bySlot: [Int32: (keys: [Key], expiry: UInt64)] = [:]
    /// Per slot: what was read of its two counters so far (to turn totals into deltas).
    private var seen: [Int32: (p0: UInt64, b0: UInt64, p1: UInt64, b1: UInt64)] = [:]
    private var throttled: Set<Int32> = []
    /// Kernel refusals (a full map, or no counter pair free): the channel stays in user space.
    public private(set) var refused: UInt64 = 0
    /// Counter slots, a pair per allocation (to the peer, to the client).
    private var pool: CounterPairPool
    private var counterBase: [Int32: UInt32] = [:]
    /// The worker's UDP listener sockets' bound addresses, by `ClientTransport.udp(listener:)`.
    let listeners: [SocketAddress]

    /// A mirror for `capacity` allocations' counters, from `counterOffset` on in the kernel's
    /// counter map (each worker has its own range).
    public init(capacity: Int, counterOffset: UInt32, listeners: [SocketAddress]) {
        pool = CounterPairPool(capacity: capacity, offset: counterOffset)
        self.listeners = listeners
    }

    /// Channels in the kernel now (each has its two entries).
    public var channels: Int { installed.count / 2 }

    /// What the kernel forwarded for allocations, by direction, read back into them.
    public struct Forwarded: Equatable, Sendable {
        public var toPeer: (packets: UInt64, bytes: UInt64) = (0, 0)
        public var toClient: (packets: UInt64, bytes: UInt64) = (0, 0)
        public static func == (a: Forwarded, b: Forwarded) -> Bool {
            a.toPeer == b.toPeer && a.toClient == b.toClient
        }
        mutating func add(_ o: Forwarded) {
            toPeer = (toPeer.packets &+ o.toPeer.packets, toPeer.bytes &+ o.toPeer.bytes)
            toClient = (toClient.packets &+ o.toClient.packets, toClient.bytes &+ o.toClient.bytes)
        }
    }

    /// Makes the kernel's entries for every allocation marked since the last call what they
    /// should be. Returns what the kernel forwarded for allocations that left the fast path.
    public mutating func sync<T: ChannelFlowTable>(_ server: TURNServer, table: inout T, now: UInt64) -> Forwarded {
        var total = Forwarded()
        guard !server.fastPathDirty.isEmpty else { return total }
        let dirty = server.fastPathDirty
        server.fastPathDirty.removeAll(keepingCapacity: true)
        var done = Set<Int32>()
        for slot in dirty where done.insert(slot).inserted {
            let before = bySlot[slot]?.keys ?? []
            var wanted: [Key: Entry] = [:]
            var expiry = UInt64.max
            if !throttled.contains(slot) && hasForwardable(slot, server, now: now) {
                if counterBase[slot] == nil, let fresh = pool.take() {
                    table.reset(counter: fresh)
                    table.reset(counter: fresh + 1)
                    seen[slot] = (0, 0, 0, 0)
                    counterBase[slot] = fresh
                }
                if let base = counterBase[slot] {
                    (wanted, expiry) = forwardable(slot, server, counters: base, now: now)
                } else {
                    refused &+= 1
                }
            }
            if !before.isEmpty && wanted.isEmpty { total.add(read(slot, table: table, server: server, now: nil)) }
            let (keys, refusals) = installed.apply(slot, before: before, wanted: wanted, table: &table)
            refused &+= refusals
            if keys.isEmpty {
                bySlot[slot] = nil
                seen[slot] = nil
                if let base = counterBase.removeValue(forKey: slot) { pool.give(base) }
            } else {
                bySlot[slot] = (keys, expiry)
            }
        }
        return total
    }

    /// Once a second: reads what the kernel forwarded into the allocations and returns it for the
    /// metrics; entries past their expiry, and allocations over or back under their bandwidth,
    /// are synced.
    public mutating func collect<T: ChannelFlowTable>(_ server: TURNServer, table: inout T, now: UInt64) -> Forwarded {
        var total = Forwarded()
        let rate = Double(server.settings.bandwidthPerAllocation), capacity = Double(server.burstBytes)
        for (slot, held) in bySlot {
            total.add(read(slot, table: table, server: server, now: now))
            if held.expiry <= now { server.fastPathDirty.append(slot) }
            if rate > 0 && server.table.pointee.allocations[Int(slot)].bandwidth.tokens < 0 {
                throttled.insert(slot)
                server.fastPathDirty.append(slot)
            }
        }
        for slot in throttled {
            let a = server.table.pointee.allocations + Int(slot)
            guard a.pointee.active else {
                throttled.remove(slot)
                continue
            }
            a.pointee.bandwidth.refill(rate: rate, capacity: capacity, now: now)
            // Back once the bucket is full again (as the native relay's sessions: RelayFastPath).
            if a.pointee.bandwidth.tokens >= capacity && bySlot[slot] == nil {
                throttled.remove(slot)
                server.fastPathDirty.append(slot)
            }
        }
        total.add(sync(server, table: &table, now: now))
        return total
    }

    /// Before an allocation ends: what the kernel forwarded for it since the last read joins its
    /// counts, so its session-log record is whole. Returned for the metrics.
    public mutating func settle<T: ChannelFlowTable>(_ slot: Int32, _ server: TURNServer, table: T) -> Forwarded {
        read(slot, table: table, server: server, now: nil)
    }

    /// Deltas of `slot`'s two counters since the last read, applied to its allocation (with
    /// `now`: its bandwidth bucket charged too).
    private mutating func read<T: ChannelFlowTable>(_ slot: Int32, table: T, server: TURNServer, now: UInt64?) -> Forwarded {
        guard var last = seen[slot], let base = counterBase[slot] else { return Forwarded() }
        let toPeer = table.read(counter: base)
        let toClient = table.read(counter: base + 1)
        var got = Forwarded()
        got.toPeer = (toPeer.packets &- last.p0, toPeer.bytes &- last.b0)
        got.toClient = (toClient.packets &- last.p1, toClient.bytes &- last.b1)
        last = (toPeer.packets, toPeer.bytes, toClient.packets, toClient.bytes)
        seen[slot] = last
        let a = server.table.pointee.allocations + Int(slot)
        guard a.pointee.active, got.toPeer.packets | got.toClient.packets != 0 else { return got }
        a.pointee.packetsToPeer &+= got.toPeer.packets
        a.pointee.bytesToPeer &+= got.toPeer.bytes
        a.pointee.packetsToClient &+= got.toClient.packets
        a.pointee.bytesToClient &+= got.toClient.bytes
        let rate = server.settings.bandwidthPerAllocation
        if let now, rate > 0 {
            a.pointee.bandwidth.refill(rate: Double(rate), capacity: Double(server.burstBytes), now: now)
            a.pointee.bandwidth.spend(Double(got.toPeer.bytes &+ got.toClient.bytes))
        }
        return got
    }

    /// Whether `slot`'s allocation can have entries at all: live, its client on UDP over IPv4
    /// through a listener whose address is known, with an IPv4 relayed socket.
    func hasForwardable(_ slot: Int32, _ server: TURNServer, now: UInt64) -> Bool {
        let t = server.table.pointee
        guard Int(slot) < t.usedSlots else { return false }
        let a = t.allocations[Int(slot)]
        guard a.active, a.expiry > now, a.client.ip.isIPv4, !a.relay4.isNone, case .udp(let listener) = a.transport,
              listeners.indices.contains(Int(listener)), listeners[Int(listener)].ip.isIPv4 else { return false }
        return a.channelCount > 0
    }

    /// The entries `slot` should have in the kernel, and the first time one of them lapses.
    func forwardable(_ slot: Int32, _ server: TURNServer, counters: UInt32, now: UInt64) -> ([Key: Entry], UInt64) {
        let t = server.table.pointee
        let a = t.allocations[Int(slot)]
        guard case .udp(let listener) = a.transport else { return ([:], .max) }
        let serverAddress = listeners[Int(listener)]
        let relay = SocketAddress(ip: server.settings.relayIPv4 ?? .ipv4Any, port: a.relayAddress4.port)
        let permissions = t.permissionBase(slot), channels = t.channelBase(slot)
        var out: [Key: Entry] = [:]
        var first = UInt64.max
        for i in 0..<Int(a.channelCount) {
            let c = channels[i]
            guard c.expiry > now, c.peer.ip.isIPv4, !server.policy.isOwnRelay(c.peer.ip), server.policy.permitsPermission(c.peer.ip) else { continue }
            var permitted: UInt64 = 0
            for p in 0..<Int(a.permissionCount) where permissions[p].ip == c.peer.ip { permitted = max(permitted, permissions[p].expiry) }
            guard permitted > now else { continue }
            let expiry = min(c.expiry, permitted, a.expiry)
            first = min(first, expiry)
            out[.toPeer(client: a.client, serverPort: serverAddress.port, channel: c.number)] =
                .toPeer(relay: relay, peer: c.peer, counter: counters, expiry: expiry)
            out[.toClient(peer: c.peer, relayPort: relay.port)] =
                .toClient(client: a.client, server: serverAddress, relayIP: relay.ip, channel: c.number, counter: counters + 1, expiry: expiry)
        }
        return (out, first)
    }
}
