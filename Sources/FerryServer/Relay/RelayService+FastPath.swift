import FerryCore
import FerryRelay
import FerryXDP

/// The XDP fast path's part of the relay (docs/xdp.md): after each batch that changed sessions,
/// the kernel's entries are made to match (`RelayFastPath.sync`); once a second, what the kernel
/// forwarded is read back into the sessions and the relay's counters, so `ferry_relay_packets_total`,
/// session logs, idle expiry and bandwidth limits count every packet, whichever path carried it.
extension RelayService {
    /// Turns the fast path on (at start-up, before the loop runs).
    func use(_ table: XDPFlowTable, counters: XDPCounters) {
        sessions?.mirrorsFastPath = true
        fastPath = FastPathState(mirror: RelayFastPath(capacity: table.capacity), table: table, counters: counters)
    }

    /// After a batch: the kernel follows what the batch changed.
    @inline(__always)
    func syncFastPath(_ table: inout RelaySessions) {
        guard !table.fastPathDirty.isEmpty, var state = fastPath.take() else { return }
        defer { fastPath = state }
        let left = state.mirror.sync(&table, table: &state.table)
        account(left)
    }

    /// Once a second, before the sessions' sweep.
    func collectFastPath(_ table: inout RelaySessions, now: UInt64) {
        guard var state = fastPath.take() else { return }
        defer { fastPath = state }
        let got = state.mirror.collect(&table, table: &state.table, now: now)
        account(got)
        metrics.set(state.counters.entries, UInt64(state.mirror.count))
        metrics.add(state.counters.refused, state.mirror.refused &- state.refusedSeen)
        state.refusedSeen = state.mirror.refused
        metrics.add(state.counters.errors, state.table.takeErrors())
    }

    private func account(_ got: (packets: UInt64, bytes: UInt64)) {
        guard got.packets > 0 else { return }
        metrics.add(counters.packets, got.packets)
        metrics.add(counters.bytes, got.bytes)
    }
}

/// The fast path's mirror and the kernel table it keeps, owned by the relay's worker.
struct FastPathState {
    var mirror: RelayFastPath
    var table: XDPFlowTable
    let counters: XDPCounters
    /// `mirror.refused` as last added to the metrics (TURN's workers add to the same series).
    var refusedSeen: UInt64 = 0
}

/// The fast path's series that ferryd keeps (the program's own are read from its stats map:
/// `Server.registerXDPStats`). The relay's worker and every TURN worker add to them.
struct XDPCounters {
    let entries: CounterID
    let channelEntries: CounterID
    let refused: CounterID
    let errors: CounterID

    init(registering r: some CounterRegistry) {
        entries = r.gauge("ferry_xdp_entries", "Native-relay flows (source, receiver index) in the XDP program's table now.")
        channelEntries = r.gauge("ferry_xdp_channel_entries", "TURN channels in the XDP program's tables now.")
        refused = r.counter("ferry_xdp_refused_total", "Flows and channels left in user space because a kernel table was full (engine.xdp_sessions, engine.xdp_channels).", labels: [], gauge: false)
        errors = r.counter("ferry_xdp_map_errors_total", "XDP map calls the kernel refused for another reason than a full table.", labels: [], gauge: false)
    }
}
