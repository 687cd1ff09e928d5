import Testing
import FerryCore
import FerryWire
import FerryTURN

@Suite struct MutatedMessages {
    /// Valid requests of every method, then mutated (bit flips, truncation, extension, length
    /// fields rewritten) and fed to the parser and the server: nothing may trap, and the server
    /// must still answer a clean Binding afterwards.
    @Test func serverSurvivesMutatedRequests() {
        let h = Harness()
        _ = h.allocate()
        let seed = SplitMix64.testSeed()
        var rng = SplitMix64(seed: seed)
        let peer = SocketAddress("192.0.2.10:7000")!
        let seeds: [[UInt8]] = [
            STUNWriter.build(method: STUN.Method.binding, class: .request) { $0.appendFingerprint() },
            STUNWriter.build(method: STUN.Method.allocate, class: .request) { w in
                w.append(STUN.Attribute.requestedTransport, uint32: 17 << 24)
                w.append(STUN.Attribute.username, string: "alice")
                w.append(STUN.Attribute.realm, string: h.realm)
                w.append(STUN.Attribute.nonce, string: h.nonce)
                let key = CredentialStore.longTermKey(username: "alice", realm: h.realm, password: "wonderland")
                key.withUnsafeBytes { w.appendMessageIntegrity(key: $0) }
                w.appendFingerprint()
            },
            STUNWriter.build(method: STUN.Method.channelBind, class: .request) { w in
                w.append(STUN.Attribute.channelNumber, uint32: 0x4000 << 16)
                w.append(STUN.Attribute.xorPeerAddress, xorAddress: peer)
                w.append(STUN.Attribute.evenPort, length: 1) { $0.storeBytes(of: UInt8(0x80), as: UInt8.self) }
                w.append(STUN.Attribute.additionalAddressFamily, uint32: 2 << 24)
            },
            STUNWriter.build(method: STUN.Method.send, class: .indication) { w in
                w.append(STUN.Attribute.xorPeerAddress, xorAddress: peer)
                w.append(STUN.Attribute.data, bytes: UnsafeRawBufferPointer(start: nil, count: 0))
            },
        ]
        var parsed = 0
        for i in 0..<20_000 {
            var m = seeds[i % seeds.count]
            switch rng.next() % 5 {
            case 0:
                for _ in 0..<(1 + Int(rng.next() % 4)) { m[Int(rng.next() % UInt64(m.count))] ^= UInt8(truncatingIfNeeded: rng.next()) }
            case 1:
                m = Array(m.prefix(Int(rng.next() % UInt64(m.count + 1))))
            case 2:
                m += (0..<Int(rng.next() % 40)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            case 3:
                if m.count >= 24 {
                    // Rewrite an attribute length or the message length.
                    let at = rng.next() % 2 == 0 ? 2 : 22
                    m[at] = UInt8(truncatingIfNeeded: rng.next())
                    m[at + 1] = UInt8(truncatingIfNeeded: rng.next())
                }
            default:
                m = (0..<Int(rng.next() % 120)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            }
            m.withUnsafeBytes { raw in
                if case .success(let msg) = STUNMessage.parse(raw) {
                    parsed += 1
                    _ = h.out.withUnsafeMutableBytes { o in
                        h.server.handle(msg, from: ClientKey(address: h.client, transport: .udp(listener: 0)), now: h.now, wallNow: h.wallNow, out: o)
                    }
                }
                _ = StreamFraming.next(raw)
                _ = ProtocolSniffer.sniff(raw)
                _ = ChannelData.parse(raw)
            }
        }
        #expect(parsed > 1000, "enough mutants parse to reach the server (FERRY_TEST_SEED=\(seed))")
        let r = h.send(STUNWriter.build(method: STUN.Method.binding, class: .request) { _ in }).reply
        #expect(r?.isSuccess == true, "FERRY_TEST_SEED=\(seed)")
    }
}
