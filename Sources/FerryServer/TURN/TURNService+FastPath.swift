import FerryCore
import FerryTURN
import FerryXDP

/// The XDP fast path's part of a TURN worker (docs/xdp.md): after each batch or request that
/// changed allocations, the kernel's channel entries are made to match (`TURNFastPath.sync`);
/// once a second, what the kernel forwarded is read back into the allocations and TURN's
/// relayed metrics, and lapsed entries leave. Before an allocation ends, its kernel counts join
/// its record.
extension TURNService {
    /// Turns the fast path on (at start-up, before the loop runs). `listeners`: this worker's UDP
    /// listener sockets' bound addresses, by index.
    func use(_ table: XDPChannelTable, counters: XDPCounters, capacity: Int, counterOffset: UInt32, listeners: [SocketAddress]) {
        server.mirrorsFastPath = true
        fastPath = ChannelFastPathState(mirror: TURNFastPath(capacity: capacity, counterOffset: counterOffset, listeners: listeners),
                                        table: table, counters: counters)
        // unowned: this service owns the server that holds the closure, and the server ends
        // allocations only when driven by this service or by the loop's sweep, which holds it.
        server.willEnd = { [unowned self] slot in
            guard var state = self.fastPath.take() else { return }
            defer { self.fastPath = state }
            self.account(state.mirror.settle(slot, self.server, table: state.table))
        }
    }

    /// After a batch or request: the kernel follows what it changed.
    @inline(__always)
    func syncFastPath() {
        guard !server.fastPathDirty.isEmpty, var state = fastPath.take() else { return }
        defer { fastPath = state }
        account(state.mirror.sync(server, table: &state.table, now: loop.now))
    }

    /// Once a second, after TURN's sweep.
    func collectFastPath(now: UInt64) {
        guard var state = fastPath.take() else { return }
        defer { fastPath = state }
        account(state.mirror.collect(server, table: &state.table, now: now))
        let c = state.counters
        metrics.set(c.channelEntries, UInt64(state.mirror.channels))
        metrics.add(c.refused, state.mirror.refused &- state.refusedSeen)
        state.refusedSeen = state.mirror.refused
        metrics.add(c.errors, state.table.takeErrors())
    }

    private func account(_ got: TURNFastPath.Forwarded) {
        if got.toPeer.packets > 0 { server.countRelayed(toPeer: true, packets: got.toPeer.packets, bytes: got.toPeer.bytes) }
        if got.toClient.packets > 0 { server.countRelayed(toPeer: false, packets: got.toClient.packets, bytes: got.toClient.bytes) }
    }
}

/// A TURN worker's fast-path mirror and the kernel table it keeps, owned by the worker.
struct ChannelFastPathState {
    var mirror: TURNFastPath
    var table: XDPChannelTable
    let counters: XDPCounters
    var refusedSeen: UInt64 = 0
}
