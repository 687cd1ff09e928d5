import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import FerryTLS
import FerryWire
import FerryRelay

/// A native-relay credential as the probe holds it: the token, its integrity key, and the public
/// key it names.
struct NativeCredential {
    let token: [UInt8]
    let key: [UInt8]
    let publicKey: [UInt8]
}

/// `ferry probe wgrelay:HOST:PORT`: STUN Binding on the relay's port, both ends of a session
/// bound from two sockets of the probe's (each through the challenge), and an echo: a WireGuard
/// handshake initiation from one end arriving, byte for byte, at the other. `wgrelays:HOST:PORT`
/// checks the stream side the same way over two TLS connections (no STUN Binding there: a
/// stream's first message must be the bind; WireGuard framed as ChannelData on channel 0x4000).
extension Prober {
    mutating func probeNative(_ u: ServerURL) -> ProbeTarget {
        var t = ProbeTarget(url: u.text, host: u.host)
        guard let a = connect(u, alpn: [], into: &t), let b = connect(u, alpn: [], into: &t) else { return t }
        let stream = u.transport != .udp
        if !stream { binding(a, into: &t) }
        guard let (ca, cb) = nativeCredentials(for: u) else {
            t.steps.append(step("relay bind", ok: false, "no credentials: give --secret, or a signaling URL whose welcome hands out this relay"))
            return t
        }
        var binders = [RelayBinder(token: ca.token, key: ca.key, partner: cb.publicKey),
                       RelayBinder(token: cb.token, key: cb.key, partner: ca.publicKey)]
        let start = monotonicNanos()
        for (i, c) in [a, b].enumerated() {
            switch bind(c, &binders[i], lifetime: nil) {
            case .bound(let active, let mapped, let lifetime)?:
                let expected = i == 1
                guard active == expected else {
                    t.steps.append(step("relay bind", ok: false, "end \(i + 1) bound but the session is \(active ? "already" : "not") active"))
                    return t
                }
                if i == 1 {
                    t.steps.append(step("relay bind", ok: true, "both ends bound (challenge answered\(stream ? ", over TLS" : "")), mapped \(mapped), idle timeout \(lifetime) s",
                                        rtt: (monotonicNanos() - start) / 2000, [("mapped", .string("\(mapped)"))]))
                }
            case .refused(let code, let reason)?:
                t.steps.append(step("relay bind", ok: false, "\(code) \(reason)\(code == 403 ? ": credentials refused (wrong secret, or expired)" : "")"))
                return t
            default:
                t.steps.append(step("relay bind", ok: false, "no signed answer within \(options.timeoutMilliseconds) ms"))
                return t
            }
        }
        let initiation = WireGuardMessage.initiation(sender: UInt32.random(in: 1...UInt32.max), responder: cb.publicKey)
        // On a stream: ChannelData on channel 0x4000 (148 bytes: no padding needed).
        let framed = stream ? [0x40, 0x00, 0, UInt8(initiation.count)] + initiation : initiation
        let sent = monotonicNanos()
        do {
            try a.send(framed)
            let deadline = sent + UInt64(options.timeoutMilliseconds) * 1_000_000
            while let m = try b.receiveMessage(until: deadline) {
                guard m == framed else { continue }
                t.steps.append(step("relay echo", ok: true, "a WireGuard handshake initiation (148 bytes) from one end arrived at the other as it was sent",
                                    rtt: (monotonicNanos() - sent) / 1000))
                for (i, c) in [a, b].enumerated() { _ = bind(c, &binders[i], lifetime: 0) }
                return t
            }
            t.steps.append(step("relay echo", ok: false, "nothing arrived at the other end within \(options.timeoutMilliseconds) ms"))
        } catch {
            t.steps.append(step("relay echo", ok: false, "\(error)"))
        }
        return t
    }

    /// Sends a bind and answers the challenge; nil on silence.
    private func bind(_ c: ClientConnection, _ binder: inout RelayBinder, lifetime: UInt32?) -> RelayBinder.Answer? {
        for _ in 0..<3 {
            let tid = TransactionID.random()
            guard (try? c.send(binder.request(tid, lifetime: lifetime))) != nil else { return nil }
            let deadline = monotonicNanos() + UInt64(options.timeoutMilliseconds) * 1_000_000
            var answer: RelayBinder.Answer?
            while answer == nil, let m = try? c.receiveMessage(until: deadline) {
                answer = m.withUnsafeBytes { binder.answer($0, tid: tid) }
            }
            guard let answer else { return nil }
            if answer != .challenged { return answer }
        }
        return nil
    }

    /// Two credentials for the relay at `u`: minted from --secret for two made-up keys, or
    /// handed out by signaling to the probe's two identities.
    private func nativeCredentials(for u: ServerURL) -> (NativeCredential, NativeCredential)? {
        if let secret = options.restSecret {
            let made = (0..<2).map { _ -> NativeCredential in
                let pub = Crypto.randomBytes(32)
                let token = RelayCredential(expiry: wallClockSeconds() + 600, key: WireGuardKey(pub), network: options.network).token
                return NativeCredential(token: token, key: RelayCredential.integrityKey(secret: secret, token: token), publicKey: pub)
            }
            return (made[0], made[1])
        }
        guard let c = nativeHandedOut[u.host], c.count >= 2 else { return nil }
        return (c[0], c[1])
    }

    mutating func noteNativeCredentials(_ relays: [SignalClient.Relay], publicKey: [UInt8]) {
        for r in relays where !r.relayToken.isEmpty {
            for url in r.urls {
                guard let s = ServerURL(url), s.kind == .native else { continue }
                nativeHandedOut[s.host, default: []].append(NativeCredential(token: r.relayToken, key: r.relayKey, publicKey: publicKey))
            }
        }
    }

    /// A second signaling session with a key of its own, for the second end's credential; its
    /// failures show in the native relay's steps (no credentials), not here.
    mutating func secondIdentity(_ u: ServerURL, token: String) {
        var ignored = ProbeTarget(url: u.text, host: u.host)
        let second = X25519.keyPair().privateKey
        guard let c = connect(u, alpn: u.transport == .tls ? ["http/1.1"] : [], into: &ignored),
              var client = SignalClient(privateKey: second, token: token, host: u.host, path: u.path) else { return }
        let deadline = monotonicNanos() + UInt64(options.timeoutMilliseconds) * 1_000_000
        do {
            try c.send(client.start())
            while monotonicNanos() < deadline {
                guard let bytes = try c.receiveBytes(timeoutMilliseconds: 100), !bytes.isEmpty else { continue }
                let (events, out) = client.receive(bytes)
                if !out.isEmpty { try c.send(out) }
                for case .welcome(_, _, let relays) in events {
                    noteNativeCredentials(relays, publicKey: Base64.decode(client.publicKey) ?? [])
                    try? c.send(client.close())
                    return
                }
            }
        } catch {}
    }
}
