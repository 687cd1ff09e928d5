#if canImport(Glibc)
import Glibc
#endif
import CFerryXDP
import FerryCore
import FerrySystem
import FerryWire

/// ferryd's XDP program in the kernel (docs/xdp.md): loaded from the object built into the
/// binary (`XDPObject`, from `bpf/ferry_xdp.bpf.c`), attached to the configured interfaces
/// through BPF links. A link is a descriptor of this process: when ferryd exits, however it
/// exits (SIGKILL included), the kernel detaches the program and frees its maps, so nothing
/// forwards for sessions that ended with it and a restarted ferryd starts from empty tables.
///
/// Ownership: created on the main thread before the workers start; the maps are then used by
/// the relay's worker only (`XDPFlowTable`), the stats read by whoever renders metrics (reads
/// only).
public final class XDPProgram: @unchecked Sendable {
    public enum Mode: String, Sendable { case generic, native }

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    private let handle: OpaquePointer
    /// Interface name → link descriptor (owned: closing it detaches).
    public private(set) var attached: [(interface: String, link: FileDescriptor)] = []
    public let mode: Mode
    let relayMap: Int32
    let countsMap: Int32
    let portsMap: Int32
    let statsMap: Int32
    let channelInMap: Int32
    let channelOutMap: Int32
    let channelCountsMap: Int32
    let turnPortsMap: Int32
    let turnConfigMap: Int32
    let txPortsMap: Int32
    /// CPUs a per-CPU value has a slot for.
    let cpus: Int

    /// Native-relay sessions the maps hold at once.
    public let sessions: Int
    /// TURN channels the maps hold at once (each with an entry per direction), and allocations
    /// with counters (at most one per channel).
    public let channels: Int
    /// WireGuard keeps up to four receiver indices per direction (RelaySessions.ringSize).
    static let flowsPerSession = 8

    /// Loads the program with maps for `sessions` native-relay sessions and `channels` TURN channels.
    public init(mode: Mode, sessions: Int, channels: Int) throws(Failure) {
        self.sessions = sessions
        self.channels = channels
        var sizes = ferry_xdp_sizes(relay_flows: UInt32(max(sessions * XDPProgram.flowsPerSession, 1)),
                                    relay_counters: UInt32(max(sessions * 2, 1)),
                                    channels: UInt32(max(channels, 1)), channel_counters: UInt32(max(channels * 2, 1)))
        guard let object = Base64.decode(XDPObject.base64) else { throw Failure(description: "the built-in XDP object is damaged") }
        var err = [CChar](repeating: 0, count: 640)
        let loaded = object.withUnsafeBytes { b in
            ferry_xdp_load(b.baseAddress, b.count, &sizes, &err, err.count)
        }
        guard let loaded else {
            throw Failure(description: String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        let cpus = Int(ferry_xdp_possible_cpus())
        guard cpus > 0 else {
            ferry_xdp_close(loaded)
            throw Failure(description: "cannot tell how many CPUs the kernel has: \(String(cString: strerror(-Int32(cpus))))")
        }
        handle = loaded
        self.mode = mode
        self.cpus = cpus
        relayMap = ferry_xdp_map_fd(loaded, FERRY_XDP_MAP_RELAY4)
        countsMap = ferry_xdp_map_fd(loaded, FERRY_XDP_MAP_COUNTS)
        portsMap = ferry_xdp_map_fd(loaded, FERRY_XDP_MAP_PORTS)
        statsMap = ferry_xdp_map_fd(loaded, FERRY_XDP_MAP_STATS)
        channelInMap = ferry_xdp_map_fd(loaded, FERRY_XDP_MAP_CHANNEL_IN4)
        channelOutMap = ferry_xdp_map_fd(loaded, FERRY_XDP_MAP_CHANNEL_OUT4)
        channelCountsMap = ferry_xdp_map_fd(loaded, FERRY_XDP_MAP_CHANNEL_COUNTS)
        turnPortsMap = ferry_xdp_map_fd(loaded, FERRY_XDP_MAP_TURN_PORTS)
        turnConfigMap = ferry_xdp_map_fd(loaded, FERRY_XDP_MAP_TURN_CONFIG)
        txPortsMap = ferry_xdp_map_fd(loaded, FERRY_XDP_MAP_TX_PORTS)
    }

    deinit { close() }

    /// Attaches to the interface called `name`, which also becomes a place the program may
    /// redirect to (a route from one attached interface out of another). A refusal (no such
    /// interface, no XDP support in native mode, another program already there, missing
    /// CAP_BPF/CAP_NET_ADMIN) says why.
    public func attach(_ name: String) throws(Failure) {
        let index = if_nametoindex(name)
        guard index > 0 else { throw Failure(description: "no interface \"\(name)\"") }
        let fd = ferry_xdp_attach(handle, Int32(index), mode == .native ? 1 : 0)
        guard fd >= 0 else {
            let reason = String(cString: strerror(-fd))
            let hint = switch -fd {
            case EPERM: " (ferryd needs CAP_BPF and CAP_NET_ADMIN)"
            case EBUSY, EEXIST: " (another XDP program is attached: `ip link show \(name)`)"
            case EOPNOTSUPP where mode == .native, EINVAL where mode == .native: " (the driver has no native XDP: try engine.xdp = \"generic\")"
            default: ""
            }
            throw Failure(description: "attaching XDP (\(mode.rawValue)) to \(name): \(reason)\(hint)")
        }
        let link = FileDescriptor(fd)
        var key = UInt32(index), value = UInt32(index)
        let rc = ferry_xdp_update(txPortsMap, &key, &value)
        guard rc == 0 else {
            _ = link.close()
            throw Failure(description: "adding \(name) to the XDP program's interfaces: \(String(cString: strerror(-rc)))")
        }
        attached.append((name, link))
    }

    /// The relay listeners' UDP ports: only packets to these are looked at.
    public func watch(port: UInt16) throws(Failure) {
        var key = port.bigEndian
        var one: UInt8 = 1
        let rc = ferry_xdp_update(portsMap, &key, &one)
        guard rc == 0 else { throw Failure(description: "adding port \(port) to the XDP program: \(String(cString: strerror(-rc)))") }
    }

    /// TURN's UDP listener ports and relayed port range: ChannelData to the former and datagrams
    /// to the latter are looked at.
    public func watchTURN(ports: [UInt16], relayPorts: ClosedRange<UInt16>) throws(Failure) {
        for port in ports {
            var key = port.bigEndian
            var one: UInt8 = 1
            let rc = ferry_xdp_update(turnPortsMap, &key, &one)
            guard rc == 0 else { throw Failure(description: "adding TURN port \(port) to the XDP program: \(String(cString: strerror(-rc)))") }
        }
        var zero: UInt32 = 0
        var range = ferry_turn_config(relay_port_min: relayPorts.lowerBound, relay_port_max: relayPorts.upperBound, pad: 0)
        let rc = ferry_xdp_update(turnConfigMap, &zero, &range)
        guard rc == 0 else { throw Failure(description: "setting TURN's relayed ports in the XDP program: \(String(cString: strerror(-rc)))") }
    }

    /// Detaches from every interface and unloads (shutdown; the process ending does the same).
    public func close() {
        for (_, link) in attached { _ = link.close() }
        attached = []
        if !closed {
            ferry_xdp_close(handle)
            closed = true
        }
    }
    private var closed = false

    /// The program's own counters (`ferry_xdp_stat`), summed over CPUs.
    public func stats() -> [UInt64] {
        var out = [UInt64](repeating: 0, count: Int(FERRY_XDP_STAT_COUNT.rawValue))
        var values = [UInt64](repeating: 0, count: cpus)
        for i in out.indices {
            var key = UInt32(i)
            guard ferry_xdp_lookup(statsMap, &key, &values) == 0 else { continue }
            out[i] = values.reduce(0, &+)
        }
        return out
    }

    /// Whether `interface` forwards IPv4 (nil: cannot tell). The kernel's route lookup for XDP
    /// is a forwarding lookup, refused on an interface that does not.
    public static func forwarding(_ interface: String) -> Bool? {
        guard let text = Files.read("/proc/sys/net/ipv4/conf/\(interface)/forwarding"), let first = text.first else { return nil }
        return first == UInt8(ascii: "1")
    }

    /// The relay's flow table on this program's maps, for the relay's worker.
    public func flowTable() -> XDPFlowTable { XDPFlowTable(program: self) }

    /// A TURN worker's channel table on this program's maps (each worker has its own, on the
    /// same maps: the kernel's map calls are safe from any thread).
    public func channelTable() -> XDPChannelTable { XDPChannelTable(program: self) }
}

/// The program's counters (`enum ferry_xdp_stat`) as ferryd names them.
public enum XDPStat {
    public static let forwarded = FERRY_XDP_FORWARDED.rawValue
    public static let forwardedBytes = FERRY_XDP_FORWARDED_BYTES.rawValue
    /// Of all forwarded (native and channels), those out of another attached interface.
    public static let redirected = FERRY_XDP_REDIRECTED.rawValue
    /// Why packets to a relay port went up to user space (`ferry_xdp_passed_total{reason}`).
    public static let passed: [(label: String, stat: UInt32)] = [
        ("no_entry", FERRY_XDP_PASS_NO_ENTRY.rawValue),
        ("not_data", FERRY_XDP_PASS_NOT_DATA.rawValue),
        ("fragment", FERRY_XDP_PASS_FRAGMENT.rawValue),
        ("truncated", FERRY_XDP_PASS_TRUNCATED.rawValue),
        ("no_route", FERRY_XDP_PASS_NO_ROUTE.rawValue),
        ("forwarding_off", FERRY_XDP_PASS_FORWARDING_OFF.rawValue),
        ("expired", FERRY_XDP_PASS_EXPIRED.rawValue),
        ("padded", FERRY_XDP_PASS_PADDED.rawValue),
        ("too_big", FERRY_XDP_PASS_TOO_BIG.rawValue),
        ("no_headroom", FERRY_XDP_PASS_NO_HEADROOM.rawValue),
        ("checksum_partial", FERRY_XDP_PASS_CHECKSUM_PARTIAL.rawValue),
        ("other_interface", FERRY_XDP_PASS_OTHER_INTERFACE.rawValue),
    ]
    /// TURN channels forwarded, by direction (`ferry_xdp_channel_packets_total{direction}`).
    public static let channels: [(label: String, packets: UInt32, bytes: UInt32)] = [
        ("to_peer", FERRY_XDP_CHANNEL_TO_PEER.rawValue, FERRY_XDP_CHANNEL_TO_PEER_BYTES.rawValue),
        ("to_client", FERRY_XDP_CHANNEL_TO_CLIENT.rawValue, FERRY_XDP_CHANNEL_TO_CLIENT_BYTES.rawValue),
    ]
}
