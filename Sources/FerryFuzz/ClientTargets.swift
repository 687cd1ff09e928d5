import COpenSSL
import FerryClient
import FerryCore
import FerryTLS
import FerryWire

/// The peer side's decoders: what a hostile or broken server (or another peer, through it) can
/// make a client read.
enum ClientTargets {
    static let peerKey = [UInt8](repeating: 7, count: 32)
    static let wsKey = [UInt8](repeating: 1, count: 16)

    /// A signaling client after a valid upgrade, fed the input in chunks (first byte: chunk size).
    static func signal(_ b: UnsafeRawBufferPointer) {
        var client = SignalClient(privateKey: peerKey, token: "t", host: "h", webSocketKey: wsKey)!
        _ = client.start()
        let accept = Base64.std(Array((Base64.std(wsKey) + WebSocket.guid).utf8).withUnsafeBytes { Crypto.digest(EVP_sha1(), $0, size: 20) })
        _ = client.receive(Array("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: \(accept)\r\n\r\n".utf8))
        require(client.phase == .awaitingHello, "a valid upgrade is accepted")
        var r = FuzzReader(b)
        let chunk = Int(r.byte() % 64) + 1
        while !r.atEnd {
            let (events, out) = client.receive(r.take(chunk))
            if events.contains(where: { if case .ended = $0 { true } else { false } }) {
                require(client.phase == .ended, "an ending leaves the client ended")
            }
            // Everything the client writes is a whole, masked frame.
            var rest = out
            while !rest.isEmpty {
                guard case .frame(let f) = rest.withUnsafeBytes({ WebSocket.parse($0, maxPayload: 1 << 21) }) else {
                    require(false, "the client writes whole masked frames")
                    return
                }
                rest.removeFirst(f.frameLength)
            }
        }
    }

    /// A TURN client driven by a script: requests, time steps, and server answers whose
    /// transaction id is rewritten to a pending one (so answers are not all strays).
    static func turn(_ b: UnsafeRawBufferPointer) {
        var r = FuzzReader(b)
        var c = TURNClient(credentials: .init(username: "u", password: "p"), reliable: r.byte() & 1 == 1)
        var now: UInt64 = 1_000_000_000
        var sent: [[UInt8]] = [c.allocate(now: now)]
        while !r.atEnd {
            switch r.byte() % 5 {
            case 0:
                sent.append(c.permit([IPAddress(ipv4: r.u32())], now: now))
            case 1:
                let peer = SocketAddress(ip: IPAddress(ipv4: r.u32()), port: r.u16())
                let (number, request) = c.bindChannel(to: peer, now: now)
                require(ChannelData.isValidChannel(number), "channel numbers stay in 0x4000–0x4FFF")
                sent.append(request)
            case 2:
                now += UInt64(r.u16()) * 10_000_000
                sent += c.tick(now: now).send
            default:
                var answer = r.blob()
                if answer.count >= 20, let tid = c.pendingTransactionIDs.first {
                    withUnsafeBytes(of: tid.high.bigEndian) { answer.replaceSubrange(8..<12, with: $0) }
                    withUnsafeBytes(of: tid.low.bigEndian) { answer.replaceSubrange(12..<20, with: $0) }
                }
                answer.withUnsafeBytes { raw in
                    guard case .success(let m) = STUNMessage.parse(raw) else { return }
                    sent += c.receive(m, now: now).send
                }
            }
            if c.phase == .allocated { require(c.relayed != nil, "allocated means a relayed address") }
        }
        for bytes in sent {
            bytes.withUnsafeBytes { raw in
                guard case .success(let m) = STUNMessage.parse(raw) else {
                    require(false, "every request the client writes is valid STUN")
                    return
                }
                require(m.fingerprintOffset >= 0, "with a FINGERPRINT")
            }
        }
    }

    /// Sealed envelopes: arbitrary text never opens (and never traps); what one side seals the
    /// other opens, once.
    static func sealed(_ b: UnsafeRawBufferPointer) {
        let a = [UInt8](repeating: 0x11, count: 32), c = [UInt8](repeating: 0x22, count: 32)
        var alice = SealedEnvelope(privateKey: a)!, carol = SealedEnvelope(privateKey: c)!
        let now: UInt64 = 1_800_000_000_000
        let text = String(decoding: b, as: UTF8.self)
        if (try? carol.open(text, type: "offer", from: alice.publicKey, nowMilliseconds: now)) != nil {
            require(false, "no forged envelope opens")
        }
        let plain = Array(b)
        let env = try! alice.seal(plain, type: "offer", to: carol.publicKey, nowMilliseconds: now, nonce: [UInt8](repeating: 3, count: 12))
        require((try? carol.open(env, type: "offer", from: alice.publicKey, nowMilliseconds: now)) == plain, "what is sealed opens")
        require((try? carol.open(env, type: "offer", from: alice.publicKey, nowMilliseconds: now)) == nil, "once")
    }
}
