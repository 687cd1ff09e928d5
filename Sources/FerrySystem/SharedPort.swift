#if canImport(Glibc)
import Glibc
#endif
import CFerryLinux
import FerryCore

/// UDP from a port another program owns: WireGuard's listen port, so the NAT mappings ICE finds
/// and the native relay binds are WireGuard's own (NetBird's `sharedsock` does the same for
/// kernel WireGuard). Datagrams leave through a raw IPv4 socket with that source port and a UDP
/// header written here; what comes back is read from the same raw socket, whose classic-BPF
/// filter keeps only packets for that port carrying STUN's magic cookie
/// (`ferry_stun_port_socket`), so WireGuard's own traffic is never copied to us. WireGuard
/// still receives our answers too, and drops them: they are not WireGuard messages.
///
/// Needs CAP_NET_RAW; `open` fails otherwise and `ferry tunnel` keeps to its proxy mode. IPv4 only.
public final class SharedPort: @unchecked Sendable {
    public let fd: FileDescriptor
    public let port: UInt16
    private var buffer = [UInt8](repeating: 0, count: 65536)

    public init(port: UInt16) throws(SystemError) {
        let raw = ferry_stun_port_socket(port)
        guard raw >= 0 else { throw SystemError(call: "socket(AF_INET, SOCK_RAW, IPPROTO_UDP) with a filter for port \(port)", errno: errno) }
        fd = FileDescriptor(raw)
        self.port = port
    }

    public func close() { _ = fd.close() }

    /// Sends `payload` to `to` from `port` (checksum 0: "none", allowed for UDP over IPv4).
    public func send(_ payload: [UInt8], to: SocketAddress) throws(SystemError) {
        guard to.ip.isIPv4 else { throw SystemError(call: "sendto (shared port): IPv6", errno: EAFNOSUPPORT) }
        var datagram = [UInt8](repeating: 0, count: 8 + payload.count)
        datagram[0] = UInt8(port >> 8); datagram[1] = UInt8(port & 0xFF)
        datagram[2] = UInt8(to.port >> 8); datagram[3] = UInt8(to.port & 0xFF)
        datagram[4] = UInt8(datagram.count >> 8); datagram[5] = UInt8(datagram.count & 0xFF)
        datagram.replaceSubrange(8..., with: payload)
        // A raw socket's address carries no port: the UDP header has it.
        let address = SocketAddress(ip: to.ip, port: 0)
        let fd = self.fd.raw
        let result: Result<IOResult<Int>, SystemError> = datagram.withUnsafeBytes { b in
            do throws(SystemError) { return .success(try Sockets.sendDatagram(fd, b, to: address)) } catch { return .failure(error) }
        }
        if case .failure(let e) = result { throw e }
    }

    /// The next STUN-bearing datagram for `port`: its UDP payload and source; nil when none waits.
    public func receive() throws(SystemError) -> (payload: [UInt8], from: SocketAddress)? {
        let fd = self.fd.raw
        let result: Result<IOResult<(Int, SocketAddress?)>, SystemError> = buffer.withUnsafeMutableBytes { b in
            do throws(SystemError) { return .success(try Sockets.receiveDatagram(fd, into: b)) } catch { return .failure(error) }
        }
        guard case .done(let (n, _)) = try result.get() else { return nil }
        guard n >= 20, buffer[0] >> 4 == 4 else { return nil }
        let ihl = Int(buffer[0] & 0x0F) * 4
        guard n >= ihl + 8 else { return nil }
        let source = IPAddress(ipv4: UInt32(buffer[12]) << 24 | UInt32(buffer[13]) << 16 | UInt32(buffer[14]) << 8 | UInt32(buffer[15]))
        let sourcePort = UInt16(buffer[ihl]) << 8 | UInt16(buffer[ihl + 1])
        let udpLength = Int(UInt16(buffer[ihl + 4]) << 8 | UInt16(buffer[ihl + 5]))
        let end = min(n, ihl + max(8, udpLength))
        return (Array(buffer[(ihl + 8)..<end]), SocketAddress(ip: source, port: sourcePort))
    }
}
