import Testing
import FerryCore
import FerryWire
import FerryRelay
@testable import FerryClient

/// The agent's end of a native-relay session against the relay's own control plane
/// (`RelayControl`, the code ferryd runs), with a fake clock: no sockets.
@Suite struct NativeBindingMachine {
    final class World {
        var now: UInt64 = 1_000 * 1_000_000_000
        var relay: RelayControl
        var sessions = RelaySessions(limits: RelaySessions.Limits())
        let address = SocketAddress("198.51.100.1:3479")!
        let me = SocketAddress("203.0.113.2:51820")!
        let secret = "relay-secret-0123456789"
        let key = Crypto.randomBytes(32), partner = Crypto.randomBytes(32)

        init() { relay = World.control(now: 1_000 * 1_000_000_000, secret: "relay-secret-0123456789") }

        static func control(now: UInt64, secret: String) -> RelayControl {
            RelayControl(cookies: BindCookies(now: UInt32(now / 1_000_000_000), key: Crypto.randomBytes(32)), secrets: [secret],
                         bindsPerSecond: 100, now: now)
        }

        func nativeRelay(secret: String? = nil) -> NativeRelay {
            let token = RelayCredential(expiry: wallClockSecondsForTests + 3600, key: WireGuardKey(key), network: "acme").token
            return NativeRelay(url: "wgrelay:198.51.100.1:3479", address: address, token: token,
                               key: RelayCredential.integrityKey(secret: secret ?? self.secret, token: token))
        }

        /// Delivers what the binding sent to the relay and the relay's answer back; the actions.
        func deliver(_ actions: [NativeBinding.Action], to b: inout NativeBinding) -> [NativeBinding.Action] {
            var out: [NativeBinding.Action] = []
            for case .send(let bytes) in actions {
                var reply = [UInt8](repeating: 0, count: 512)
                let (n, _) = bytes.withUnsafeBytes { m in
                    reply.withUnsafeMutableBytes { relay.handle(m, from: me, now: now, wall: wallClockSecondsForTests, sessions: &sessions, reply: $0) }
                }
                guard n > 0 else { continue }
                let answer = Array(reply[0..<n])
                if let next = answer.withUnsafeBytes({ b.receive($0, now: now) }) { out += next }
            }
            return out
        }

        /// Runs the exchange to quiescence.
        func settle(_ actions: [NativeBinding.Action], _ b: inout NativeBinding) -> [NativeBinding.Action] {
            var pending = actions, seen: [NativeBinding.Action] = []
            while pending.contains(where: { if case .send = $0 { return true } else { return false } }) {
                let next = deliver(pending, to: &b)
                seen += next.filter { if case .send = $0 { return false } else { return true } }
                pending = next
            }
            return seen + actions.filter { if case .send = $0 { return false } else { return true } }
        }
    }

    @Test func aBindAnswersTheChallengeAndReportsBoundOnce() {
        let w = World()
        var b = NativeBinding(relay: w.nativeRelay(), partner: w.partner)
        #expect(w.settle(b.start(now: w.now), &b) == [.bound(active: false, mapped: w.me)])
        #expect(b.isBound && w.sessions.sessionCount == 1)
        // The refresh a minute later goes through quietly.
        w.now += NativeBinding.refresh + 1
        let refresh = b.tick(now: w.now)
        #expect(refresh.count == 1)
        #expect(w.settle(refresh, &b) == [])
        #expect(b.tick(now: w.now + 1) == [], "nothing more until the next refresh")
    }

    @Test func silenceIsRetriedThenGivenUp() {
        let w = World()
        var b = NativeBinding(relay: w.nativeRelay(), partner: w.partner)
        _ = b.start(now: w.now)
        var sends = 1
        for _ in 0..<10 {
            w.now += NativeBinding.retry
            for a in b.tick(now: w.now) {
                if case .send = a { sends += 1 }
                if case .failed = a { #expect(sends == NativeBinding.attempts); return }
            }
            #expect(b.tick(now: w.now) == [], "not twice within a retry interval")
        }
        Issue.record("never gave up")
    }

    @Test func aRefusalFailsAtOnce() {
        let w = World()
        var b = NativeBinding(relay: w.nativeRelay(secret: "another-secret-0123"), partner: w.partner)
        let seen = w.settle(b.start(now: w.now), &b)
        #expect(seen.count == 1 && { if case .failed(let why) = seen[0] { return why.contains("403") } else { return false } }())
        #expect(b.finished && b.tick(now: w.now + 10 * NativeBinding.retry) == [])
    }

    @Test func aRestartedRelayIsBoundAgainOnRebind() {
        let w = World()
        var b = NativeBinding(relay: w.nativeRelay(), partner: w.partner)
        _ = w.settle(b.start(now: w.now), &b)
        // ferryd restarts: new cookie key, no sessions.
        w.relay = World.control(now: w.now, secret: w.secret)
        w.sessions = RelaySessions(limits: RelaySessions.Limits())
        #expect(w.settle(b.rebind(now: w.now), &b) == [])
        #expect(w.sessions.sessionCount == 1, "bound again, through a fresh challenge")
    }

    @Test func answersThatAreNotTheRelaysAreIgnored() {
        let w = World()
        var b = NativeBinding(relay: w.nativeRelay(), partner: w.partner)
        guard case .send(let first)? = b.start(now: w.now).first else { Issue.record("no bind"); return }
        let tid = first.withUnsafeBytes { b -> TransactionID? in
            guard case .success(let m) = STUNMessage.parse(b) else { return nil }
            return m.transactionID
        }!
        // A forged success for this very transaction, without the credential's integrity.
        let forged = STUNWriter.build(method: RelayProtocol.bindMethod, class: .success, transactionID: tid) { wr in
            wr.append(RelayProtocol.Attribute.xorMappedAddress, xorAddress: w.me)
            wr.append(STUN.Attribute.lifetime, uint32: 180)
        }
        #expect(forged.withUnsafeBytes { b.receive($0, now: w.now) } == nil)
        // Another transaction's challenge.
        let other = STUNWriter.build(method: RelayProtocol.bindMethod, class: .error) { wr in wr.appendErrorCode(401, reason: "Challenge") }
        #expect(other.withUnsafeBytes { b.receive($0, now: w.now) } == nil)
        #expect(!b.isBound)
    }

    @Test func endUnbindsABoundEnd() {
        let w = World()
        var b = NativeBinding(relay: w.nativeRelay(), partner: w.partner)
        _ = w.settle(b.start(now: w.now), &b)
        let bye = b.end()
        #expect(bye.count == 1)
        _ = w.deliver(bye, to: &b)
        #expect(w.sessions.sessionCount == 0 && b.finished)
        var never = NativeBinding(relay: w.nativeRelay(), partner: w.partner)
        #expect(never.end() == [], "nothing to unbind before a bind")
    }
}

let wallClockSecondsForTests: UInt64 = 1_800_000_000
