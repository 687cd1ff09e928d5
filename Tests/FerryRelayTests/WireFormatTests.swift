import Testing
import FerryCore
import FerryWire
import FerrySystem
@testable import FerryRelay

/// WireGuard's framing as the relay reads it, and the first-byte rule that tells it from control
/// messages on one port.
@Suite struct WireFormat {
    /// A real initiation from wireguard-go (Vectors/): its mac1 names the responder, not the
    /// initiator, and any changed byte before it breaks it.
    @Test func mac1OfAWireGuardGoInitiationNamesItsResponder() throws {
        let dir = #filePath.split(separator: "/").dropLast().joined(separator: "/")
        let text = String(decoding: try #require(Files.read("/" + dir + "/Vectors/wireguard-go-initiation.txt")), as: UTF8.self)
        var f: [String: Substring] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: " ", maxSplits: 1)
            f[String(parts[0])] = parts[1]
        }
        let hex = try #require(f["initiation"]), responderText = try #require(f["responder"]), initiatorText = try #require(f["initiator"])
        var packet = hexBytes(hex)
        let responder = try #require(Base64.decode(String(responderText)))
        let initiator = try #require(Base64.decode(String(initiatorText)))
        func matches(_ key: [UInt8]) -> Bool {
            packet.withUnsafeBytes { p in
                WireGuardMessage.mac1Key(publicKey: key).withUnsafeBytes { WireGuardMessage.mac1Matches(p.baseAddress!, .initiation, mac1Key: $0) }
            }
        }
        #expect(packet.withUnsafeBytes { RelayProtocol.classify($0.baseAddress!, length: $0.count) } == .wireGuard(.initiation))
        #expect(matches(responder))
        #expect(!matches(initiator))
        packet[40] ^= 1
        #expect(!matches(responder))
    }

    @Test func firstBytesTellControlFromWireGuard() {
        func classify(_ m: [UInt8]) -> RelayProtocol.Classified { m.withUnsafeBytes { RelayProtocol.classify($0.baseAddress!, length: $0.count) } }
        let stun = STUNWriter.build(method: RelayProtocol.bindMethod, class: .request) { _ in }
        #expect(stun[0] == 0 && classify(stun) == .control)
        let binding = STUNWriter.build(method: STUN.Method.binding, class: .request) { _ in }
        #expect(classify(binding) == .control)
        #expect(classify(WG.data(receiver: 7, payload: 0)) == .wireGuard(.transportData))
        #expect(classify(WG.data(receiver: 7, payload: 1388)) == .wireGuard(.transportData))  // MTU 1420, not a multiple of 16
        #expect(classify(WG.initiation(sender: 1, to: Crypto.randomBytes(32))) == .wireGuard(.initiation))
        #expect(classify(WG.response(sender: 1, receiver: 2, to: Crypto.randomBytes(32))) == .wireGuard(.response))
        var cookie = [UInt8](repeating: 0, count: 64); cookie[0] = 3
        #expect(classify(cookie) == .wireGuard(.cookieReply))
        // Wrong lengths, a reserved byte set, an unknown type, a STUN header without the cookie.
        #expect(classify(Array(WG.data(receiver: 7, payload: 0).dropLast())) == .invalid)
        #expect(classify(Array(WG.initiation(sender: 1, to: Crypto.randomBytes(32)).dropLast())) == .invalid)
        var reserved = WG.data(receiver: 7); reserved[2] = 1
        #expect(classify(reserved) == .invalid)
        var five = WG.data(receiver: 7); five[0] = 5
        #expect(classify(five) == .invalid)
        var noCookie = stun; noCookie[4] = 0
        #expect(classify(noCookie) == .invalid)
        #expect(classify([0, 1, 0]) == .invalid)
    }
}
