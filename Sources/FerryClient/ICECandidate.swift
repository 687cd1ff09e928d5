import FerryCore
import FerryWire

/// An ICE candidate (RFC 8445 §5.1) in the SDP attribute form of RFC 8839 §5.1, which aioice,
/// libnice and browsers read: `FOUNDATION 1 udp PRIORITY ADDRESS PORT typ TYPE [raddr A rport P]`.
public struct ICECandidate: Equatable, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable { case host, srflx, prflx, relay }

    /// The related address of a candidate whose base is not revealed (`raddr 0.0.0.0 rport 0`,
    /// as browsers send for relay candidates).
    public static let undisclosed = SocketAddress(ip: .ipv4Any, port: 0)

    public var foundation: String
    public var component: Int
    public var priority: UInt32
    public var address: SocketAddress
    public var kind: Kind
    public var related: SocketAddress?

    public init(kind: Kind, address: SocketAddress, base: SocketAddress? = nil, localPreference: UInt16 = 65535, component: Int = 1) {
        self.kind = kind
        self.address = address
        self.component = component
        related = kind == .host ? nil : base
        priority = ICECandidate.priority(kind, localPreference: localPreference, component: component)
        // RFC 8445 §5.1.1.3: the same for candidates of one type, base and server. An
        // undisclosed base (a relay candidate's) keys on the candidate's own (server) address,
        // so the foundation, a hash, does not carry the host's address either.
        let keyIP = base.map { $0 == ICECandidate.undisclosed ? address.ip : $0.ip } ?? address.ip
        let key = "\(kind.rawValue)|udp|\(keyIP)"
        foundation = String(Crypto.hex(Crypto.sha256(Array(key.utf8))).prefix(8))
    }

    /// RFC 8445 §5.1.2.1: 2^24 · type preference + 2^8 · local preference + (256 − component).
    public static func priority(_ kind: Kind, localPreference: UInt16, component: Int) -> UInt32 {
        let type: UInt32 = switch kind { case .host: 126; case .prflx: 110; case .srflx: 100; case .relay: 0 }
        return type << 24 + UInt32(localPreference) << 8 + UInt32(256 - component)
    }

    public init?(sdp text: String) {
        var t = Substring(text)
        if t.hasPrefix("a=") { t = t.dropFirst(2) }
        if t.hasPrefix("candidate:") { t = t.dropFirst(10) }
        let f = t.split(separator: " ")
        guard f.count >= 8, f[2].lowercased() == "udp", f[6] == "typ", let component = Int(f[1]),
              let priority = UInt32(f[3]), let ip = IPAddress(String(f[4])), let port = UInt16(f[5]),
              let kind = Kind(rawValue: String(f[7])) else { return nil }
        foundation = String(f[0])
        self.component = component
        self.priority = priority
        address = SocketAddress(ip: ip, port: port)
        self.kind = kind
        var raddr: IPAddress?, rport: UInt16?
        var i = 8
        while i + 1 < f.count {
            if f[i] == "raddr" { raddr = IPAddress(String(f[i + 1])) }
            if f[i] == "rport" { rport = UInt16(f[i + 1]) }
            i += 2
        }
        related = raddr.map { SocketAddress(ip: $0, port: rport ?? 0) }
    }

    public var sdp: String {
        var s = "\(foundation) \(component) udp \(priority) \(address.ip) \(address.port) typ \(kind.rawValue)"
        if let related { s += " raddr \(related.ip) rport \(related.port)" }
        return s
    }

    public var description: String { sdp }
}

/// How a local candidate sends: straight from the agent's UDP socket (host, server-reflexive),
/// or through its TURN allocation (relayed: the shell wraps the bytes in ChannelData or a Send
/// indication to the remote address).
public enum ICEVia: Equatable, Hashable, Sendable { case direct, relayed }

/// The path a pair gives data: which way, to which remote transport address.
public struct ICERoute: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let via: ICEVia
    public let remote: SocketAddress
    public let localKind: ICECandidate.Kind
    public let remoteKind: ICECandidate.Kind
    /// Whether data crosses a TURN relay (ours, theirs, or both) rather than going peer to peer.
    public var throughRelay: Bool { via == .relayed || remoteKind == .relay }
    public var description: String {
        via == .direct ? "direct to \(remote) (\(localKind.rawValue)→\(remoteKind.rawValue))"
                       : "relayed to \(remote) (\(localKind.rawValue)→\(remoteKind.rawValue))"
    }
}
