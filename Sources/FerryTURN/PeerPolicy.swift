import FerryCore

/// An address block, `10.0.0.0/8` or `fc00::/7`.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    public let base: IPAddress
    public let prefix: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard let ip = IPAddress(String(parts[0])) else { return nil }
        let max = ip.isIPv4 ? 32 : 128
        let prefix: Int
        if parts.count == 1 {
            prefix = max
        } else if parts.count == 2, let p = Int(parts[1]), (0...max).contains(p) {
            prefix = p
        } else {
            return nil
        }
        self.init(ip, prefix)
    }

    public init(_ ip: IPAddress, _ prefix: Int) {
        self.prefix = prefix
        // Stored masked, so 10.1.2.3/8 is 10.0.0.0/8.
        let bits = ip.isIPv4 ? 96 + prefix : prefix
        let (mh, ml) = CIDR.mask(bits)
        base = IPAddress(high: ip.high & mh, low: ip.low & ml, isIPv4: ip.isIPv4)
    }

    static func mask(_ bits: Int) -> (UInt64, UInt64) {
        let h: UInt64 = bits >= 64 ? .max : (bits == 0 ? 0 : ~(UInt64.max >> UInt64(bits)))
        let l: UInt64 = bits <= 64 ? 0 : (bits >= 128 ? .max : ~(UInt64.max >> UInt64(bits - 64)))
        return (h, l)
    }

    public func contains(_ ip: IPAddress) -> Bool {
        guard ip.isIPv4 == base.isIPv4 else { return false }
        let (mh, ml) = CIDR.mask(base.isIPv4 ? 96 + prefix : prefix)
        return ip.high & mh == base.high && ip.low & ml == base.low
    }

    public var description: String { "\(base)/\(prefix)" }
}

/// Which peers a relay may send to: no open relay (RFC 8656 §17, "Security Considerations").
///
/// A peer address is first canonicalised: IPv6 forms that carry an IPv4 address (IPv4-mapped,
/// IPv4-compatible, 6to4, NAT64 64:ff9b::/96, Teredo) are checked as that IPv4 address too, so
/// `::ffff:127.0.0.1` or `64:ff9b::a9fe:a9fe` (169.254.169.254) is as denied as the plain form.
///
/// Order: an explicit `deny` match on any form denies; else an `allow` match on any form allows
/// (allow overrides the defaults); else a default-denied block on any form denies; else allowed.
///
/// The relay's own relayed addresses (`turn.relay_ipv4/6`, `turn.external_ipv4/6`, exactly: not
/// their block, not their embedded forms) are a case of their own. Two peers that both fall back
/// to this relay send to each other's relayed addresses, which on a VPC or CGNAT deployment sit in
/// a default-denied block, so a permission for such an address is granted; but a datagram to one
/// goes only to a port that a live allocation of this ferryd holds (`RelayPortSet`), checked on
/// every ChannelBind, Send and ChannelData. Every other port there — the TURN listener, the admin
/// port, the host's resolver and NTP sockets and any other process's UDP socket, which the relay
/// port range shares with the kernel's ephemeral ports — is never reached, whether the address is
/// private or public. An explicit `deny` still wins; an explicit `allow` covering the address
/// opens all of its ports (the development default allows 127.0.0.0/8 so that local test peers
/// work).
public struct PeerPolicy: Sendable {
    public let allow: [CIDR]
    public let deny: [CIDR]
    /// The addresses relayed sockets bind to or advertise (`turn.relay_ipv4/6`,
    /// `turn.external_ipv4/6`).
    public let ownRelayAddresses: [IPAddress]

    /// Denied unless allowed: addresses that are never a peer on the Internet, and where a
    /// relay would reach into the operator's own network or cloud metadata services.
    public static let defaultDenied: [CIDR] = [
        "0.0.0.0/8",          // "this network", unspecified
        "10.0.0.0/8",         // RFC 1918
        "100.64.0.0/10",      // CGNAT, RFC 6598 (Alibaba Cloud metadata 100.100.100.200 and VPC DNS)
        "127.0.0.0/8",        // loopback
        "169.254.0.0/16",     // link-local, cloud metadata 169.254.169.254
        "172.16.0.0/12",      // RFC 1918
        "192.0.0.0/24",       // IETF protocol assignments (incl. DS-Lite B4 192.0.0.0/29)
        "192.168.0.0/16",     // RFC 1918
        "198.18.0.0/15",      // benchmarking
        "224.0.0.0/4",        // multicast
        "240.0.0.0/4",        // reserved, and 255.255.255.255 broadcast
        "::/128",             // unspecified
        "::1/128",            // loopback
        "fc00::/7",           // unique local (incl. AWS IMDS fd00:ec2::254)
        "fe80::/10",          // link-local
        "fec0::/10",          // site-local (deprecated)
        "ff00::/8",           // multicast
        "64:ff9b:1::/48",     // local-use NAT64 (RFC 8215): translated to private networks
    ].map { CIDR($0)! }

    public init(allow: [CIDR] = [], deny: [CIDR] = [], ownRelayAddresses: [IPAddress] = []) {
        self.allow = allow
        self.deny = deny
        self.ownRelayAddresses = ownRelayAddresses.filter { $0 != .ipv4Any && $0 != .ipv6Any }
    }

    /// The address and the IPv4 addresses it embeds.
    public static func forms(_ ip: IPAddress) -> [IPAddress] {
        var out = [ip]
        if let v4 = embeddedIPv4(ip) { out.append(v4) }
        return out
    }

    /// The IPv4 address an IPv6 address carries, by its well-known encodings.
    public static func embeddedIPv4(_ ip: IPAddress) -> IPAddress? {
        if ip.isIPv4 { return nil }
        let low32 = UInt32(truncatingIfNeeded: ip.low)
        // IPv4-mapped ::ffff:a.b.c.d (a socket may hand these to us as IPv6).
        if ip.high == 0 && ip.low >> 32 == 0xFFFF { return IPAddress(ipv4: low32) }
        // IPv4-compatible ::a.b.c.d (deprecated), except :: and ::1 themselves.
        if ip.high == 0 && ip.low >> 32 == 0 && low32 > 1 { return IPAddress(ipv4: low32) }
        // NAT64 well-known prefix 64:ff9b::/96.
        if ip.high == 0x0064_FF9B_0000_0000 && ip.low >> 32 == 0 { return IPAddress(ipv4: low32) }
        // 6to4 2002:aabb:ccdd::/48.
        if ip.high >> 48 == 0x2002 { return IPAddress(ipv4: UInt32(truncatingIfNeeded: ip.high >> 16)) }
        // Teredo 2001:0::/32: the client's IPv4 address, bit-inverted, in the last 32 bits.
        if ip.high >> 32 == 0x2001_0000 { return IPAddress(ipv4: ~low32) }
        return nil
    }

    public enum Verdict: Equatable, Sendable {
        case allowed
        case deniedExplicitly(CIDR)
        case deniedByDefault(CIDR)

        public var isAllowed: Bool { self == .allowed }
    }

    public func check(_ ip: IPAddress) -> Verdict {
        let forms = PeerPolicy.forms(ip)
        for f in forms { if let c = deny.first(where: { $0.contains(f) }) { return .deniedExplicitly(c) } }
        for f in forms where allow.contains(where: { $0.contains(f) }) { return .allowed }
        for f in forms { if let c = PeerPolicy.defaultDenied.first(where: { $0.contains(f) }) { return .deniedByDefault(c) } }
        return .allowed
    }

    /// Whether any port of `ip` may be a peer (the policy alone, without the own-relay rule).
    public func permits(_ ip: IPAddress) -> Bool { check(ip).isAllowed }

    /// Whether `ip` is exactly one of the relay's own relayed addresses.
    @inlinable public func isOwnRelay(_ ip: IPAddress) -> Bool { ownRelayAddresses.contains(ip) }

    /// Whether datagrams to `ip` may go only to the ports of live allocations: one of the relay's
    /// own addresses that no `allow` entry opens explicitly.
    public func limitsToLivePorts(_ ip: IPAddress) -> Bool {
        guard isOwnRelay(ip) else { return false }
        if case .allowed = check(ip), allow.contains(where: { $0.contains(ip) }) { return false }
        return true
    }

    /// CreatePermission (an address without a port): the policy, or one of the relay's own
    /// addresses unless explicitly denied (what reaches it is then limited per port).
    public func permitsPermission(_ ip: IPAddress) -> Bool {
        switch check(ip) {
        case .allowed: return true
        case .deniedByDefault: return isOwnRelay(ip)
        case .deniedExplicitly: return false
        }
    }

    /// ChannelBind and Send (an address and port): on one of the relay's own addresses, a port of
    /// a live allocation of this ferryd (unless explicitly allowed or denied); elsewhere the policy.
    public func permits(peer: SocketAddress, live: RelayPortSet) -> Bool {
        guard permitsPermission(peer.ip) else { return false }
        return !limitsToLivePorts(peer.ip) || live.contains(peer)
    }

    /// The per-packet check for Send indications, whose address was already admitted by a
    /// permission: costs a comparison with the relay's few addresses, and for one of them a
    /// look at the live ports.
    @inlinable public func refusesSend(to peer: SocketAddress, live: RelayPortSet) -> Bool {
        isOwnRelay(peer.ip) && limitsToLivePorts(peer.ip) && !live.contains(peer)
    }
}
