import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import FerryTLS
import FerryWire
#if canImport(Glibc)
import Glibc
#endif


/// ferry tunnel's status file (`ferry tunnel status`).
extension Tunnel {
    // MARK: Status

    public static func defaultStatusFile(interface: String?) -> String {
        "/run/ferry/tunnel-\(interface ?? "peers").json"
    }

    func status() -> JSONValue {
        let now = loop.now
        return .object([
            ("interface", config.interface.map { .string($0) } ?? .null),
            ("key", .string(publicKey)),
            ("signaling", .string(welcomed ? "connected" : "disconnected")),
            ("relay", .string(relay.transportDescription)),
            ("relayed_address", relay.candidate.map { .string("\($0.address)") } ?? .null),
            ("ice_port", .number(Double(icePort))),
            ("shared_port", .string(sharedPortState)),
            ("native_relays", .array(nativeRelays.map { .string($0.url) })),
            ("uptime_seconds", .number(Double((now - started) / 1_000_000_000))),
            ("peers", .array(links.map { l in
                var path: String = l.route.map { $0.throughRelay ? "relayed" : "direct" } ?? (l.online ? "connecting" : "offline")
                if l.native?.isBound == true && l.handedOff != nil { path = "native-relay" }
                if l.nativeStream?.binding.isBound == true { path = "native-relay-stream" }
                let handedOff: JSONValue = l.handedOff.map { .string("\($0)") } ?? .null
                var m: [(String, JSONValue)] = [("key", .string(l.key)), ("path", .string(path)),
                                                ("local_endpoint", .string("127.0.0.1:\(l.proxyPort)")), ("online", .bool(l.online)),
                                                ("wireguard_endpoint", handedOff),
                                                ("native_relay", l.native.map { .string($0.relay.url) }
                                                    ?? l.nativeStream.map { _ in .string(nativeStreamURL?.text ?? "") } ?? .null)]
                if let r = l.route {
                    m.append(("route", .string("\(r)")))
                    m.append(("remote", .string("\(r.remote)")))
                    m.append(("since_seconds", .number(Double((now - l.routeSince) / 1_000_000_000))))
                    if let pair = l.ice?.selectedPair { m.append(("rtt_ms", .number(Double(pair.rtt / 10_000) / 100))) }
                }
                m += [("rx_packets", .number(Double(l.rxPackets))), ("rx_bytes", .number(Double(l.rxBytes))),
                      ("tx_packets", .number(Double(l.txPackets))), ("tx_bytes", .number(Double(l.txBytes))),
                      ("dropped_no_path", .number(Double(l.dropped &+ l.held.dropped)))]
                return .object(m)
            })),
        ])
    }

    func writeStatus() {
        statusDirty = false
        lastStatus = loop.now
        let path = config.statusFile ?? Self.defaultStatusFile(interface: config.interface)
        Files.replace(path, contents: status().encoded() + [10])
    }
}
