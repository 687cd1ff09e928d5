#if canImport(Glibc)
import Glibc
#endif
import CFerryLinux
import FerryCore

/// The kernel's view of a `SocketAddress`: sockaddr_in/sockaddr_in6 in and out. Lives here, not
/// in FerryCore, so the codecs and protocol modules never see a socket type.
extension SocketAddress {
    public var family: Int32 { ip.isIPv4 ? AF_INET : AF_INET6 }

    /// Reads a kernel socket address; nil for families other than IPv4 and IPv6.
    @inlinable
    public init?(storage: UnsafeRawPointer) {
        let family = storage.load(as: sa_family_t.self)
        switch Int32(family) {
        case AF_INET:
            let sin = storage.load(as: sockaddr_in.self)
            self.init(ip: IPAddress(ipv4: UInt32(bigEndian: sin.sin_addr.s_addr)),
                      port: UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            let sin6 = storage.load(as: sockaddr_in6.self)
            var h: UInt64 = 0, l: UInt64 = 0
            withUnsafeBytes(of: sin6.sin6_addr) { raw in
                h = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
                l = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            }
            self.init(ip: IPAddress(high: h, low: l, isIPv4: false), port: UInt16(bigEndian: sin6.sin6_port))
        default:
            return nil
        }
    }

    /// Writes the kernel form into `storage` (room for a sockaddr_storage) and returns its length.
    /// An IPv4 address written for an IPv6 socket (`asIPv6`) takes its mapped form.
    @inlinable
    @discardableResult
    public func write(to storage: UnsafeMutableRawPointer, asIPv6: Bool = false) -> socklen_t {
        if ip.isIPv4 && !asIPv6 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            sin.sin_addr.s_addr = ip.ipv4.bigEndian
            storage.storeBytes(of: sin, as: sockaddr_in.self)
            return socklen_t(MemoryLayout<sockaddr_in>.size)
        }
        var sin6 = sockaddr_in6()
        sin6.sin6_family = sa_family_t(AF_INET6)
        sin6.sin6_port = port.bigEndian
        withUnsafeMutableBytes(of: &sin6.sin6_addr) { raw in
            raw.storeBytes(of: ip.high.bigEndian, toByteOffset: 0, as: UInt64.self)
            raw.storeBytes(of: ip.low.bigEndian, toByteOffset: 8, as: UInt64.self)
        }
        storage.storeBytes(of: sin6, as: sockaddr_in6.self)
        return socklen_t(MemoryLayout<sockaddr_in6>.size)
    }

    /// Calls `body` with a kernel socket address.
    public func withSockAddr<R>(asIPv6: Bool = false, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        var storage = sockaddr_storage()
        return try withUnsafeMutablePointer(to: &storage) { ptr in
            let len = write(to: UnsafeMutableRawPointer(ptr), asIPv6: asIPv6)
            return try ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, len) }
        }
    }
}
