import Testing
#if canImport(Glibc)
import Glibc
#endif
import FerryCore
@testable import FerrySystem

/// The shared port on loopback: another socket owns the UDP port (WireGuard's, in `ferry
/// tunnel`); the raw socket sends with that source port and sees only STUN for it.
///
/// A raw socket sees the whole host's UDP for its port, whichever socket it is for. The sockets
/// here set SO_REUSEADDR, and Linux then may hand the same ephemeral port to two of them open at
/// once: in CI the two tests below, run in parallel, got one test's `owner` and the other's
/// `other` on one port, and each raw socket read the other test's STUN. So the suite is
/// serialized, each message carries a random transaction id, and the assertions look for this
/// test's messages rather than for silence (another suite's socket may share the port too).
@Suite(.serialized) struct SharedPortFilter {
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

    /// Everything the raw socket reads within `wait` ms.
    func drain(_ s: SharedPort, wait: Int32 = 300) -> [([UInt8], SocketAddress)] {
        var out: [([UInt8], SocketAddress)] = []
        var p = pollfd(fd: s.fd.raw, events: Int16(POLLIN), revents: 0)
        while poll(&p, 1, wait) == 1, let r = try? s.receive() { out.append((r.payload, r.from)) }
        return out
    }

    /// A STUN Binding request with a random transaction id.
    static func stun() -> [UInt8] {
        [0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42] + (0..<12).map { _ in UInt8.random(in: 0...255) }
    }

    @Test(.enabled(if: getuid() == 0, "raw sockets need CAP_NET_RAW"))
    func stunForThePortReachesTheRawSocketAndNothingElseDoes() throws {
        let (owner, ownerAddress) = try udp()
        let (other, otherAddress) = try udp()
        let shared = try SharedPort(port: ownerAddress.port)
        defer { _ = owner.close(); _ = other.close(); shared.close() }
        // A WireGuard-like datagram and a STUN message to the owner's port, and STUN to another port.
        let wireGuard: [UInt8] = [4, 0, 0, 0] + (0..<60).map { _ in UInt8.random(in: 0...255) }
        let mine = Self.stun(), elsewhere = Self.stun()
        for m in [wireGuard, mine] {
            _ = try m.withUnsafeBytes { try Sockets.sendDatagram(other.raw, $0, to: ownerAddress) }
        }
        _ = try elsewhere.withUnsafeBytes { try Sockets.sendDatagram(owner.raw, $0, to: otherAddress) }
        #expect(receive(owner)?.0 == wireGuard, "the owner gets everything, as before")
        #expect(receive(owner)?.0 == mine)
        #expect(receive(other)?.0 == elsewhere)
        let seen = drain(shared)
        #expect(seen.contains { $0.0 == mine && $0.1 == otherAddress }, "the raw socket gets the STUN message and its source")
        #expect(!seen.contains { $0.0 == wireGuard }, "not the WireGuard one")
        #expect(!seen.contains { $0.0 == elsewhere }, "not STUN for another port")
    }

    @Test(.enabled(if: getuid() == 0, "raw sockets need CAP_NET_RAW"))
    func whatTheRawSocketSendsLeavesFromTheOwnersPort() throws {
        let (owner, ownerAddress) = try udp()
        let (other, otherAddress) = try udp()
        let shared = try SharedPort(port: ownerAddress.port)
        defer { _ = owner.close(); _ = other.close(); shared.close() }
        let m = Self.stun()
        try shared.send(m, to: otherAddress)
        let got = receive(other)
        #expect(got?.0 == m && got?.1 == ownerAddress)
    }
}
