#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address as 16 bytes in network order; IPv4 is kept in its IPv4-mapped form
/// (`::ffff:a.b.c.d`) with `isIPv4` set, so one comparable value serves both families.
/// A plain value: cheap to copy, hash and compare on the packet path.
public struct IPAddress: Hashable, Sendable {
    /// Bytes 0–7 and 8–15 of the address, in network order, loaded big-endian.
    public var high: UInt64
    public var low: UInt64
    public var isIPv4: Bool

    public init(high: UInt64, low: UInt64, isIPv4: Bool) {
        self.high = high
        self.low = low
        self.isIPv4 = isIPv4
    }

    /// An IPv4 address from its 32-bit value (host order, `a.b.c.d` = a<<24 | …).
    public init(ipv4 value: UInt32) {
        high = 0
        low = 0x0000_FFFF_0000_0000 | UInt64(value)
        isIPv4 = true
    }

    /// An IPv6 address from its 16 bytes in network order.
    public init<C: Collection>(ipv6Bytes bytes: C) where C.Element == UInt8 {
        precondition(bytes.count == 16)
        var h: UInt64 = 0, l: UInt64 = 0
        for (i, b) in bytes.enumerated() {
            if i < 8 { h = h << 8 | UInt64(b) } else { l = l << 8 | UInt64(b) }
        }
        high = h
        low = l
        isIPv4 = false
    }

    /// The IPv4 value in host order; meaningful only when `isIPv4`.
    public var ipv4: UInt32 { UInt32(truncatingIfNeeded: low) }

    /// The 16 bytes in network order (IPv4 as its mapped form).
    public var bytes: [UInt8] {
        (0..<16).map { i in UInt8(truncatingIfNeeded: (i < 8 ? high : low) >> UInt64(8 * (7 - i % 8))) }
    }

    /// Parses dotted IPv4 or textual IPv6 (no brackets, no zone).
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self.init(ipv4: UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            let bytes = withUnsafeBytes(of: &v6) { Array($0) }
            self.init(ipv6Bytes: bytes)
            return
        }
        return nil
    }

    public static let ipv4Any = IPAddress(ipv4: 0)
    public static let ipv6Any = IPAddress(high: 0, low: 0, isIPv4: false)
}

extension IPAddress: CustomStringConvertible {
    public var description: String {
        if isIPv4 {
            let v = ipv4
            return "\(v >> 24).\(v >> 16 & 0xff).\(v >> 8 & 0xff).\(v & 0xff)"
        }
        var a = in6_addr()
        let b = bytes
        withUnsafeMutableBytes(of: &a) { raw in for i in 0..<16 { raw[i] = b[i] } }
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(INET6_ADDRSTRLEN)) { buf in
            _ = inet_ntop(AF_INET6, &a, buf.baseAddress, socklen_t(buf.count))
            return String(cString: buf.baseAddress!)
        }
    }
}

/// An IP address and port: the unit of UDP addressing and of TURN's five-tuples.
public struct SocketAddress: Hashable, Sendable {
    public var ip: IPAddress
    public var port: UInt16

    public init(ip: IPAddress, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    /// Parses `1.2.3.4:5`, `[::1]:5`. Returns nil for anything else.
    public init?(_ text: String) {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let port = UInt16(portText), let ip = IPAddress(String(host)) else { return nil }
        self.init(ip: ip, port: port)
    }

}

extension SocketAddress: CustomStringConvertible {
    public var description: String {
        ip.isIPv4 ? "\(ip):\(port)" : "[\(ip)]:\(port)"
    }
}
