#if canImport(Glibc)
import Glibc
#endif
import CFerryXDP
import FerryCore
import FerryRelay

/// `RelayFastPath`'s table on the XDP program's maps: `relay4` entries and `relay_counts`
/// per-CPU counters. One map call per change, made after a batch or once a second on the relay's
/// worker, never per packet.
public struct XDPFlowTable: RelayFlowTable {
    let program: XDPProgram
    private var counters: FlowCounters
    /// Map calls the kernel refused other than a full table (ENOMEM, EPERM…), not yet taken
    /// into the metrics.
    public private(set) var errors: UInt64 = 0
    /// Sessions the maps are sized for (`engine.xdp_sessions`).
    public let capacity: Int

    init(program: XDPProgram) {
        self.program = program
        capacity = program.sessions
        counters = FlowCounters(map: program.countsMap, cpus: program.cpus)
    }

    /// The errors counted since the last call (the caller adds them to the metrics).
    public mutating func takeErrors() -> UInt64 {
        defer { errors = 0 }
        return errors
    }

    static func key(_ k: RelayFastPath.Key) -> ferry_relay_key {
        ferry_relay_key(source_ip: k.source.ip.ipv4.bigEndian, source_port: k.source.port.bigEndian, pad: 0,
                        index: k.index.littleEndian)
    }

    public mutating func set(_ key: RelayFastPath.Key, _ entry: RelayFastPath.Entry) -> Bool {
        var k = XDPFlowTable.key(key)
        var v = ferry_relay_dest(dest_ip: entry.dest.ip.ipv4.bigEndian, dest_port: entry.dest.port.bigEndian, pad: 0, counter: entry.counter)
        let rc = ferry_xdp_update(program.relayMap, &k, &v)
        if rc != 0 && rc != -E2BIG { errors &+= 1 }
        return rc == 0
    }

    public mutating func remove(_ key: RelayFastPath.Key) {
        var k = XDPFlowTable.key(key)
        let rc = ferry_xdp_delete(program.relayMap, &k)
        if rc != 0 && rc != -ENOENT { errors &+= 1 }
    }

    public func read(counter: UInt32) -> (packets: UInt64, bytes: UInt64) { counters.read(counter) }

    public mutating func reset(counter: UInt32) {
        if !counters.reset(counter) { errors &+= 1 }
    }
}
