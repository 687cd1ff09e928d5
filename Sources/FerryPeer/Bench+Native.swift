import FerryClient
import FerryCore
import FerryRelay
import FerrySystem
import FerryWire

/// `ferry bench wgrelay:HOST:PORT --secret S`: the sockets bind native-relay sessions in pairs
/// (each through the relay's challenge, with credentials minted from the relay's secret for keys
/// made up here), teach the relay each pair's receiver indices with one handshake, then send
/// WireGuard transport-data messages to their partners through the relay.
extension Bench {
    func setUpNative() throws(Failure) {
        guard let secret = options.nativeSecret else { throw Failure(description: "a native relay needs --secret (turn.static_auth_secrets)") }
        try resolveServer()
        let keys = (0..<options.allocations).map { _ in Crypto.randomBytes(32) }
        for i in 0..<options.allocations {
            do {
                sockets.append(try ClientConnection(to: server, transport: .udp, host: options.server.host, caFile: nil,
                                                    timeoutMilliseconds: 5000, socketBuffers: 4 << 20))
            } catch {
                throw Failure(description: "\(error)")
            }
            let token = RelayCredential(expiry: wallClockSeconds() + 86400, key: WireGuardKey(keys[i]), network: options.network).token
            binders.append(RelayBinder(token: token, key: RelayCredential.integrityKey(secret: secret, token: token), partner: keys[i ^ 1]))
        }
        for i in 0..<options.allocations {
            switch try bind(i, lifetime: nil) {
            case .bound(let active, _, _) where active == (i % 2 == 1): break
            case let other: throw Failure(description: "bind \(i + 1): \(String(describing: other))")
            }
        }
        // One handshake per pair: even sockets initiate (sender index i + 1).
        indices = [UInt32](repeating: 0, count: options.allocations)
        for i in stride(from: 0, to: options.allocations, by: 2) {
            let initiator = UInt32(i + 1), responder = UInt32(i + 2)
            try exchange(from: i, WireGuardMessage.initiation(sender: initiator, responder: keys[i + 1]), to: i + 1)
            try exchange(from: i + 1, WireGuardMessage.response(sender: responder, receiver: initiator, initiator: keys[i]), to: i)
            indices[i] = responder
            indices[i + 1] = initiator
        }
    }

    /// Sends on socket `from` and waits for the same bytes on socket `to`.
    private func exchange(from: Int, _ message: [UInt8], to: Int) throws(Failure) {
        do {
            try sockets[from].send(message)
            let deadline = monotonicNanos() + 5_000_000_000
            while true {
                guard let m = try sockets[to].receiveMessage(until: deadline) else {
                    throw Failure(description: "the relay did not forward a handshake message")
                }
                if m == message { return }
            }
        } catch let e as Failure {
            throw e
        } catch {
            throw Failure(description: "\(error)")
        }
    }

    /// A bind (answering the challenge): the relay's answer.
    private func bind(_ i: Int, lifetime: UInt32?) throws(Failure) -> RelayBinder.Answer? {
        for _ in 0..<3 {
            let tid = TransactionID.random()
            do {
                try sockets[i].send(binders[i].request(tid, lifetime: lifetime))
                let deadline = monotonicNanos() + 5_000_000_000
                var answer: RelayBinder.Answer?
                while answer == nil, let m = try sockets[i].receiveMessage(until: deadline) {
                    answer = m.withUnsafeBytes { binders[i].answer($0, tid: tid) }
                }
                guard let answer else { return nil }
                if answer != .challenged { return answer }
            } catch {
                throw Failure(description: "\(error)")
            }
        }
        return nil
    }

    func releaseNative() {
        for i in sockets.indices { _ = try? bind(i, lifetime: 0) }
    }
}
