import FerryCore
import FerryWire

/// A server a client talks to, from the URLs operators and `welcome` hand out: ICE server URIs
/// (RFC 7064 `stun:`, RFC 7065 `turn:`/`turns:` with `?transport=udp|tcp`) and signaling
/// WebSocket URLs (`ws://`, `wss://`), and Ferry's native WireGuard relay (`wgrelay:HOST[:PORT]`,
/// UDP, and its stream side over TLS `wgrelays:HOST[:PORT]`, port 443 unless given;
/// docs/relay-protocol.md).
public struct ServerURL: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable { case stun, turn, signal, native }
    public enum Transport: String, Sendable { case udp, tcp, tls }

    public let kind: Kind
    public let transport: Transport
    public let host: String
    public let port: UInt16
    /// The signaling path (`/v1/signal`); empty for STUN and TURN.
    public let path: String
    public let text: String

    public var description: String { text }

    public init?(_ text: String) {
        self.text = text
        var rest: Substring
        var secure = false
        if text.hasPrefix("stun:") || text.hasPrefix("stuns:") {
            kind = .stun
            secure = text.hasPrefix("stuns:")
            rest = text.dropFirst(secure ? 6 : 5)
        } else if text.hasPrefix("turn:") || text.hasPrefix("turns:") {
            kind = .turn
            secure = text.hasPrefix("turns:")
            rest = text.dropFirst(secure ? 6 : 5)
        } else if text.hasPrefix("wgrelay:") || text.hasPrefix("wgrelays:") {
            kind = .native
            secure = text.hasPrefix("wgrelays:")
            rest = text.dropFirst(secure ? 9 : 8)
        } else if text.hasPrefix("ws://") || text.hasPrefix("wss://") {
            kind = .signal
            secure = text.hasPrefix("wss://")
            rest = text.dropFirst(secure ? 6 : 5)
        } else {
            return nil
        }
        var query: Substring = ""
        if let q = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: q)...]
            rest = rest[..<q]
        }
        var p: Substring = ""
        if kind == .signal, let slash = rest.firstIndex(of: "/") {
            p = rest[slash...]
            rest = rest[..<slash]
        }
        // host, host:port, [v6], [v6]:port
        var host = rest, portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { return nil }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        }
        guard !host.isEmpty else { return nil }
        self.host = String(host)
        var transport: Transport = secure ? .tls : .udp
        if kind == .signal { transport = secure ? .tls : .tcp }
        for item in query.split(separator: "&") where item.hasPrefix("transport=") {
            switch item.dropFirst(10) {
            case "udp": guard !secure else { return nil }
            case "tcp": transport = secure ? .tls : .tcp
            default: return nil
            }
        }
        self.transport = transport
        let defaultPort: UInt16 = kind == .signal ? (secure ? 443 : 80) : kind == .native ? (secure ? 443 : 3479) : (secure ? 5349 : 3478)
        if let portText {
            guard let v = UInt16(portText), v > 0 else { return nil }
            port = v
        } else {
            port = defaultPort
        }
        path = kind == .signal ? (p.isEmpty ? "/v1/signal" : String(p)) : ""
    }
}

/// A STUN Binding request and its answer (RFC 8489 §7): what a peer's public address is.
public enum STUNBinding {
    public static func request(_ tid: TransactionID = .random()) -> [UInt8] {
        STUNWriter.build(method: STUN.Method.binding, class: .request, transactionID: tid) { w in w.appendFingerprint() }
    }

    /// The mapped address in a success answer to `tid` (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS).
    public static func mappedAddress(_ m: STUNMessage, tid: TransactionID) -> SocketAddress? {
        guard m.method == STUN.Method.binding, m.messageClass == .success, m.transactionID == tid else { return nil }
        return m.xorAddress(STUN.Attribute.xorMappedAddress)
    }
}

/// The order a client tries relays in (`ferry tunnel`, from the relays `welcome` hands out):
/// transports that cost least first (UDP, then TCP, then TLS, RFC 8656's fallbacks), and within
/// a transport the relay hosts by measured round trip (a STUN binding to each; unmeasured ones
/// after, in the order given). The same ranking `ferry probe` prints.
public enum RelayOrder {
    public static func order(_ urls: [ServerURL], roundTrips: [String: UInt64]) -> [ServerURL] {
        func rank(_ t: ServerURL.Transport) -> Int { t == .udp ? 0 : t == .tcp ? 1 : 2 }
        return urls.enumerated().sorted { a, b in
            let ka = (rank(a.element.transport), roundTrips[a.element.host] ?? .max, a.offset)
            let kb = (rank(b.element.transport), roundTrips[b.element.host] ?? .max, b.offset)
            return ka < kb
        }.map(\.element)
    }
}
