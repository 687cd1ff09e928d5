import Testing
#if canImport(Glibc)
import Glibc
#endif
import FerryCore
@testable import FerrySystem

/// The shared port on loopback: another socket owns the UDP port (WireGuard's, in `ferry
/// tunnel`); the raw socket sends with that source port and sees only STUN for it.
@Suite struct SharedPortFilter {
    func udp() throws -> (FileDescriptor, SocketAddress) {
        let fd = try Sockets.udpClient(local: SocketAddress("127.0.0.1:0")!)
        return (fd, try Sockets.localAddress(fd.raw))
    }

    func receive(_ fd: FileDescriptor, wait: Int32 = 500) -> ([UInt8], SocketAddress)? {
        var p = pollfd(fd: fd.raw, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, wait) == 1 else { return nil }
        var buf = [UInt8](repeating: 0, count: 2048)
        guard case .done(let (n, from))? = try? buf.withUnsafeMutableBytes({ try Sockets.receiveDatagram(fd.raw, into: $0) }), let from else { return nil }
        return (Array(buf[0..<n]), from)
    }

    func sharedReceive(_ s: SharedPort, wait: Int32 = 500) -> ([UInt8], SocketAddress)? {
        var p = pollfd(fd: s.fd.raw, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, wait) == 1, let r = try? s.receive() else { return nil }
        return (r.payload, r.from)
    }

    static let stun: [UInt8] = [0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42] + [UInt8](repeating: 7, count: 12)

    @Test(.enabled(if: getuid() == 0, "raw sockets need CAP_NET_RAW"))
    func stunForThePortReachesTheRawSocketAndNothingElseDoes() throws {
        let (owner, ownerAddress) = try udp()
        let (other, otherAddress) = try udp()
        let shared = try SharedPort(port: ownerAddress.port)
        defer { _ = owner.close(); _ = other.close(); shared.close() }
        // A WireGuard-like datagram and a STUN message to the owner's port.
        let wireGuard: [UInt8] = [4, 0, 0, 0] + [UInt8](repeating: 9, count: 60)
        for m in [wireGuard, Self.stun] {
            _ = try m.withUnsafeBytes { try Sockets.sendDatagram(other.raw, $0, to: ownerAddress) }
        }
        #expect(receive(owner)?.0 == wireGuard, "the owner gets everything, as before")
        #expect(receive(owner)?.0 == Self.stun)
        let got = sharedReceive(shared)
        #expect(got?.0 == Self.stun && got?.1 == otherAddress, "the raw socket gets the STUN message and its source")
        #expect(sharedReceive(shared, wait: 100) == nil, "and not the WireGuard one")
        // STUN for another port is not ours either.
        _ = try Self.stun.withUnsafeBytes { try Sockets.sendDatagram(owner.raw, $0, to: otherAddress) }
        #expect(receive(other)?.0 == Self.stun)
        #expect(sharedReceive(shared, wait: 100) == nil)
    }

    @Test(.enabled(if: getuid() == 0, "raw sockets need CAP_NET_RAW"))
    func whatTheRawSocketSendsLeavesFromTheOwnersPort() throws {
        let (owner, ownerAddress) = try udp()
        let (other, otherAddress) = try udp()
        let shared = try SharedPort(port: ownerAddress.port)
        defer { _ = owner.close(); _ = other.close(); shared.close() }
        try shared.send(Self.stun, to: otherAddress)
        let got = receive(other)
        #expect(got?.0 == Self.stun && got?.1 == ownerAddress)
    }
}
