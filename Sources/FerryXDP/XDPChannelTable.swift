#if canImport(Glibc)
import Glibc
#endif
import CFerryXDP
import FerryCore
import FerryTURN

/// `TURNFastPath`'s table on the XDP program's maps: `channel_in4` and `channel_out4` entries and
/// `channel_counts` per-CPU counters. One map call per change, made on a TURN worker after a
/// batch or once a second, never per packet.
public struct XDPChannelTable: ChannelFlowTable {
    let program: XDPProgram
    private var counters: FlowCounters
    /// Map calls the kernel refused other than a full table, not yet taken into the metrics.
    public private(set) var errors: UInt64 = 0

    init(program: XDPProgram) {
        self.program = program
        counters = FlowCounters(map: program.channelCountsMap, cpus: program.cpus)
    }

    /// The errors counted since the last call (the caller adds them to the metrics).
    public mutating func takeErrors() -> UInt64 {
        defer { errors = 0 }
        return errors
    }

    private static func ip(_ a: IPAddress) -> UInt32 { a.isIPv4 ? a.ipv4.bigEndian : 0 }

    public mutating func set(_ key: TURNFastPath.Key, _ entry: TURNFastPath.Entry) -> Bool {
        let rc: Int32
        switch (key, entry) {
        case (.toPeer(let client, let serverPort, let channel), .toPeer(let relay, let peer, let counter, let expiry)):
            var k = ferry_channel_in_key(client_ip: Self.ip(client.ip), client_port: client.port.bigEndian,
                                         server_port: serverPort.bigEndian, channel: channel.bigEndian, pad: 0)
            var v = ferry_channel_in_dest(relay_ip: Self.ip(relay.ip), peer_ip: Self.ip(peer.ip), relay_port: relay.port.bigEndian,
                                          peer_port: peer.port.bigEndian, counter: counter, expiry: expiry)
            rc = ferry_xdp_update(program.channelInMap, &k, &v)
        case (.toClient(let peer, let relayPort), .toClient(let client, let server, let relayIP, let channel, let counter, let expiry)):
            var k = ferry_channel_out_key(peer_ip: Self.ip(peer.ip), peer_port: peer.port.bigEndian, relay_port: relayPort.bigEndian)
            var v = ferry_channel_out_dest(client_ip: Self.ip(client.ip), server_ip: Self.ip(server.ip), relay_ip: Self.ip(relayIP),
                                           client_port: client.port.bigEndian, server_port: server.port.bigEndian,
                                           channel: channel.bigEndian, pad: 0, counter: counter, expiry: expiry)
            rc = ferry_xdp_update(program.channelOutMap, &k, &v)
        default:
            return false
        }
        if rc != 0 && rc != -E2BIG { errors &+= 1 }
        return rc == 0
    }

    public mutating func remove(_ key: TURNFastPath.Key) {
        let rc: Int32
        switch key {
        case .toPeer(let client, let serverPort, let channel):
            var k = ferry_channel_in_key(client_ip: Self.ip(client.ip), client_port: client.port.bigEndian,
                                         server_port: serverPort.bigEndian, channel: channel.bigEndian, pad: 0)
            rc = ferry_xdp_delete(program.channelInMap, &k)
        case .toClient(let peer, let relayPort):
            var k = ferry_channel_out_key(peer_ip: Self.ip(peer.ip), peer_port: peer.port.bigEndian, relay_port: relayPort.bigEndian)
            rc = ferry_xdp_delete(program.channelOutMap, &k)
        }
        if rc != 0 && rc != -ENOENT { errors &+= 1 }
    }

    public func read(counter: UInt32) -> (packets: UInt64, bytes: UInt64) { counters.read(counter) }

    public mutating func reset(counter: UInt32) {
        if !counters.reset(counter) { errors &+= 1 }
    }
}
