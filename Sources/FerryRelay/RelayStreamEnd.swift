import FerryCore

/// A session end bound over a stream (docs/relay-protocol.md, "Stream side"): it has no UDP
/// address, so the relay names it with a synthetic one that `RelaySessions` keys like any other.
/// Port 0, which no UDP datagram can come from, marks it; the address is in 100::/64, IPv6's
/// discard-only prefix (RFC 6666), with the worker and the connection id in its low 64 bits.
/// A packet routed to such an address goes to that worker's connection instead of `sendmmsg`.
public enum RelayStreamEnd {
    static let prefix: UInt64 = 0x0100_0000_0000_0000

    public static func address(worker: Int, connection: ConnectionID) -> SocketAddress {
        SocketAddress(ip: IPAddress(high: prefix, low: UInt64(UInt32(truncatingIfNeeded: worker)) << 32 | UInt64(connection.raw), isIPv4: false),
                      port: 0)
    }

    /// The worker and connection a synthetic address names; nil for a real address.
    @inlinable
    public static func decode(_ a: SocketAddress) -> (worker: Int, connection: ConnectionID)? {
        guard a.port == 0, !a.ip.isIPv4, a.ip.high == 0x0100_0000_0000_0000 else { return nil }
        return (Int(a.ip.low >> 32), ConnectionID(UInt32(truncatingIfNeeded: a.ip.low)))
    }
}
