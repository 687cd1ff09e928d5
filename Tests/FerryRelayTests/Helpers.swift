import Testing
import FerryCore
import FerryWire
@testable import FerryRelay

/// A peer of the tests: a WireGuard key pair's public half and an address.
struct TestPeer {
    let key: [UInt8]
    var address: SocketAddress
    var wg: WireGuardKey { WireGuardKey(key) }

    init(_ address: String) {
        key = Crypto.randomBytes(32)
        self.address = SocketAddress(address)!
    }
}

enum WG {
    /// A handshake initiation from `sender` index for `responder`, with a valid mac1.
    static func initiation(sender: UInt32, to responder: [UInt8]) -> [UInt8] {
        var m = [UInt8](repeating: 0, count: WireGuardMessage.initiationLength)
        m[0] = 1
        withUnsafeBytes(of: sender.littleEndian) { for i in 0..<4 { m[4 + i] = $0[i] } }
        for i in 8..<116 { m[i] = UInt8.random(in: 0...255) }
        seal(&m, offset: 116, key: responder)
        return m
    }

    /// A handshake response from `sender` to `receiver`'s index, mac1 for the initiator's key.
    static func response(sender: UInt32, receiver: UInt32, to initiator: [UInt8]) -> [UInt8] {
        var m = [UInt8](repeating: 0, count: WireGuardMessage.responseLength)
        m[0] = 2
        withUnsafeBytes(of: sender.littleEndian) { for i in 0..<4 { m[4 + i] = $0[i] } }
        withUnsafeBytes(of: receiver.littleEndian) { for i in 0..<4 { m[8 + i] = $0[i] } }
        seal(&m, offset: 60, key: initiator)
        return m
    }

    static func data(receiver: UInt32, payload: Int = 64) -> [UInt8] {
        var m = [UInt8](repeating: 0xAB, count: 32 + payload)
        m[0] = 4; m[1] = 0; m[2] = 0; m[3] = 0
        withUnsafeBytes(of: receiver.littleEndian) { for i in 0..<4 { m[4 + i] = $0[i] } }
        return m
    }

    static func seal(_ m: inout [UInt8], offset: Int, key: [UInt8]) {
        let k = WireGuardMessage.mac1Key(publicKey: key)
        var mac = [UInt8](repeating: 0, count: 16)
        k.withUnsafeBytes { kb in
            m.withUnsafeBytes { mb in
                mac.withUnsafeMutableBytes { Crypto.blake2sMAC16(key: kb, data: UnsafeRawBufferPointer(rebasing: mb[0..<offset]), into: $0.baseAddress!) }
            }
        }
        for i in 0..<16 { m[offset + i] = mac[i] }
    }
}

/// Sessions with each pair's two ends bound at `now` (and kept in a fast-path mirror's view).
func bound(_ pairs: [(TestPeer, TestPeer)], limits: RelaySessions.Limits = RelaySessions.Limits(), now: UInt32 = 100,
           mirrorsFastPath: Bool = false) -> RelaySessions {
    var s = RelaySessions(limits: limits)
    s.mirrorsFastPath = mirrorsFastPath
    for (x, y) in pairs {
        _ = s.bind(network: "acme", key: x.wg, partner: y.wg, address: x.address, now: now)
        _ = s.bind(network: "acme", key: y.wg, partner: x.wg, address: y.address, now: now)
    }
    return s
}

/// One full handshake x → y, learning both indices; returns them.
func handshake(_ s: inout RelaySessions, _ x: TestPeer, _ y: TestPeer, at t: UInt32 = 100) -> (UInt32, UInt32) {
    let ix = UInt32.random(in: 1...UInt32.max), iy = UInt32.random(in: 1...UInt32.max)
    #expect(s.route(WG.initiation(sender: ix, to: y.key), from: x.address, at: t) == .forward(y.address))
    #expect(s.route(WG.response(sender: iy, receiver: ix, to: x.key), from: y.address, at: t) == .forward(x.address))
    return (ix, iy)
}

extension RelaySessions {
    mutating func route(_ m: [UInt8], from: SocketAddress, at seconds: UInt32) -> Route {
        m.withUnsafeBytes { b in
            guard case .wireGuard(let kind) = RelayProtocol.classify(b.baseAddress!, length: b.count) else { return .drop(.malformed) }
            return route(b.baseAddress!, length: b.count, kind: kind, from: from, now: UInt64(seconds) * 1_000_000_000)
        }
    }
}

func hexBytes(_ s: Substring) -> [UInt8] {
    var out: [UInt8] = []
    var i = s.startIndex
    while i < s.endIndex {
        let j = s.index(i, offsetBy: 2)
        out.append(UInt8(s[i..<j], radix: 16)!)
        i = j
    }
    return out
}
