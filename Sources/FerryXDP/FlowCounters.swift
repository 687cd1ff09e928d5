import CFerryXDP

/// One of the program's per-CPU counter maps (`relay_counts`, `channel_counts`): a pair of
/// packets and bytes per slot and CPU, read summed over CPUs and reset to zero by user space.
struct FlowCounters {
    let map: Int32
    /// One value per CPU (a per-CPU map's lookup fills them all).
    private var scratch: [ferry_flow_count]

    init(map: Int32, cpus: Int) {
        self.map = map
        scratch = [ferry_flow_count](repeating: ferry_flow_count(), count: cpus)
    }

    func read(_ counter: UInt32) -> (packets: UInt64, bytes: UInt64) {
        var key = counter
        var values = scratch
        guard ferry_xdp_lookup(map, &key, &values) == 0 else { return (0, 0) }
        return values.reduce((0, 0)) { ($0.0 &+ $1.packets, $0.1 &+ $1.bytes) }
    }

    /// False when the kernel refused.
    mutating func reset(_ counter: UInt32) -> Bool {
        var key = counter
        for i in scratch.indices { scratch[i] = ferry_flow_count() }
        return ferry_xdp_update(map, &key, &scratch) == 0
    }
}
