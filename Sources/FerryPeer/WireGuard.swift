import FerryCore
import FerrySystem
import FerryWire

/// A WireGuard interface as `wg` shows and sets it (wireguard-tools; the same for the kernel
/// module and wireguard-go, which serve the same UAPI).
public struct WireGuardInterface: Sendable {
    public let name: String
    public let privateKey: [UInt8]
    public let listenPort: UInt16
    public let peers: [String]
    /// Each peer's endpoint when read (none for a peer WireGuard has not been told of one).
    public let endpoints: [String: SocketAddress]

    /// Parses `wg show IFACE dump`: the interface line (private key, public key, listen port,
    /// fwmark), then one line per peer (public key, preshared key, endpoint, allowed IPs, …).
    public static func parse(dump: String, name: String) -> WireGuardInterface? {
        let lines = dump.split(separator: "\n")
        guard let first = lines.first else { return nil }
        let f = first.split(separator: "\t")
        guard f.count >= 3, let key = Base64.decode(String(f[0])), key.count == 32, let port = UInt16(f[2]) else { return nil }
        var peers: [String] = []
        var endpoints: [String: SocketAddress] = [:]
        for line in lines.dropFirst() {
            let f = line.split(separator: "\t", omittingEmptySubsequences: false)
            let k = f.first.map(String.init) ?? ""
            guard Base64.decode(k)?.count == 32 else { continue }
            peers.append(k)
            if f.count > 2, let e = SocketAddress(String(f[2])) { endpoints[k] = e }
        }
        return WireGuardInterface(name: name, privateKey: key, listenPort: port, peers: peers, endpoints: endpoints)
    }

    public struct Failure: Error, CustomStringConvertible { public let description: String }

    public static func read(_ name: String) throws(Failure) -> WireGuardInterface {
        let r = Subprocess.run(["wg", "show", name, "dump"])
        guard r.status == 0 else { throw Failure(description: "wg show \(name) dump: \(r.output.trimmedLines)") }
        guard let i = parse(dump: r.output, name: name) else {
            throw Failure(description: "wg show \(name) dump: unexpected output (is the private key set, and a listen port?)")
        }
        return i
    }

    /// Bytes received and sent per peer, from `wg show IFACE dump` (nil if it cannot be read).
    public static func transfer(_ name: String) -> [String: (rx: UInt64, tx: UInt64)]? {
        let r = Subprocess.run(["wg", "show", name, "dump"])
        guard r.status == 0 else { return nil }
        var out: [String: (rx: UInt64, tx: UInt64)] = [:]
        for line in r.output.split(separator: "\n").dropFirst() {
            let f = line.split(separator: "\t")
            guard f.count >= 7, let rx = UInt64(f[5]), let tx = UInt64(f[6]) else { continue }
            out[String(f[0])] = (rx, tx)
        }
        return out
    }

    /// Points WireGuard's endpoint for `peer` at `endpoint` (the agent's local socket for it).
    public func setEndpoint(peer: String, _ endpoint: SocketAddress) throws(Failure) {
        let r = Subprocess.run(["wg", "set", name, "peer", peer, "endpoint", "\(endpoint)"])
        guard r.status == 0 else { throw Failure(description: "wg set \(name) peer \(peer.prefix(8))… endpoint: \(r.output.trimmedLines)") }
    }
}

extension String {
    var trimmedLines: String { split(separator: "\n").joined(separator: "; ") }
}
