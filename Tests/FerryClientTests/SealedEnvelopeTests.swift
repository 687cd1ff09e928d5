import Testing
import FerryClient
import FerryTLS
import FerryWire

@Suite struct SealedEnvelopeChecks {
    let a = X25519.keyPair(), b = X25519.keyPair(), c = X25519.keyPair()
    let now: UInt64 = 1_800_000_000_000

    @Test func opensOnlyForTheRecipientFromTheSenderAsTheSameKind() throws {
        var alice = SealedEnvelope(privateKey: a.privateKey)!, bob = SealedEnvelope(privateKey: b.privateKey)!
        var carol = SealedEnvelope(privateKey: c.privateKey)!
        let secret = Array("candidate 198.51.100.7:51820".utf8)
        let env = try alice.seal(secret, type: "offer", to: b.publicKey, nowMilliseconds: now)
        let raw = Base64.decode(env)!
        #expect(!(0...(raw.count - secret.count)).contains { Array(raw[$0..<($0 + secret.count)]) == secret }, "no plaintext in the envelope")
        // Everyone but Bob, and Bob told the wrong sender or kind, is refused.
        #expect(throws: SealedEnvelope.Failure.forged) { try carol.open(env, type: "offer", from: a.publicKey, nowMilliseconds: now) }
        #expect(throws: SealedEnvelope.Failure.forged) { try bob.open(env, type: "offer", from: c.publicKey, nowMilliseconds: now) }
        #expect(throws: SealedEnvelope.Failure.forged) { try bob.open(env, type: "answer", from: a.publicKey, nowMilliseconds: now) }
        #expect(try bob.open(env, type: "offer", from: a.publicKey, nowMilliseconds: now) == secret)
    }

    @Test func refusesReplayReflectionAndStaleness() throws {
        var alice = SealedEnvelope(privateKey: a.privateKey)!, bob = SealedEnvelope(privateKey: b.privateKey)!
        let env = try alice.seal([1, 2, 3], type: "candidate", to: b.publicKey, nowMilliseconds: now)
        _ = try bob.open(env, type: "candidate", from: a.publicKey, nowMilliseconds: now + 10)
        #expect(throws: SealedEnvelope.Failure.replayed) { try bob.open(env, type: "candidate", from: a.publicKey, nowMilliseconds: now + 20) }
        // Reflected: Bob sends Alice's own message back to her; the server says it is from Bob.
        #expect(throws: SealedEnvelope.Failure.forged) { try alice.open(env, type: "candidate", from: b.publicKey, nowMilliseconds: now) }
        let late = try alice.seal([4], type: "candidate", to: b.publicKey, nowMilliseconds: now)
        #expect(throws: SealedEnvelope.Failure.stale) {
            try bob.open(late, type: "candidate", from: a.publicKey, nowMilliseconds: now + SealedEnvelope.windowMilliseconds + 1)
        }
        let early = try alice.seal([5], type: "candidate", to: b.publicKey, nowMilliseconds: now + SealedEnvelope.windowMilliseconds + 1)
        #expect(throws: SealedEnvelope.Failure.stale) { try bob.open(early, type: "candidate", from: a.publicKey, nowMilliseconds: now) }
    }

    @Test func refusesTamperingAnywhere() throws {
        var alice = SealedEnvelope(privateKey: a.privateKey)!
        let raw = Base64.decode(try alice.seal(Array("hello".utf8), type: "offer", to: b.publicKey, nowMilliseconds: now))!
        for i in 1..<raw.count {
            var bob = SealedEnvelope(privateKey: b.privateKey)!
            var bad = raw
            bad[i] ^= 0x01
            #expect(throws: (any Error).self, "byte \(i)") { try bob.open(Base64.std(bad), type: "offer", from: a.publicKey, nowMilliseconds: now) }
        }
        var bob = SealedEnvelope(privateKey: b.privateKey)!
        var v2 = raw
        v2[0] = 2
        #expect(throws: SealedEnvelope.Failure.unsupportedVersion) { try bob.open(Base64.std(v2), type: "offer", from: a.publicKey, nowMilliseconds: now) }
        #expect(throws: SealedEnvelope.Failure.malformed) { try bob.open("not base64!", type: "offer", from: a.publicKey, nowMilliseconds: now) }
        #expect(throws: SealedEnvelope.Failure.badKey) { try bob.open(Base64.std(raw), type: "offer", from: [UInt8](repeating: 0, count: 32), nowMilliseconds: now) }
    }

    @Test func remembersBoundedlyWithoutAdmittingReplays() throws {
        var alice = SealedEnvelope(privateKey: a.privateKey)!, bob = SealedEnvelope(privateKey: b.privateKey)!
        var first: String?
        for i in 0..<(SealedEnvelope.maxRemembered + 10) {
            let env = try alice.seal([UInt8(i & 0xFF)], type: "candidate", to: b.publicKey, nowMilliseconds: now + UInt64(i))
            if first == nil { first = env }
            _ = try bob.open(env, type: "candidate", from: a.publicKey, nowMilliseconds: now + UInt64(i))
        }
        // The first nonce was forgotten to stay bounded; its time is now below the floor.
        #expect(throws: SealedEnvelope.Failure.stale) { try bob.open(first!, type: "candidate", from: a.publicKey, nowMilliseconds: now + 5000) }
    }

    /// One configured peer sending more than the cache holds, stamped near the window's far edge,
    /// must not push another peer's fresh messages below a floor.
    @Test func oneSendersFloodAndFutureStampsDoNotLockOutAnother() throws {
        var carol = SealedEnvelope(privateKey: c.privateKey)!, alice = SealedEnvelope(privateKey: a.privateKey)!
        var bob = SealedEnvelope(privateKey: b.privateKey)!
        for i in 0..<(SealedEnvelope.maxRemembered * 4 + 10) {
            let env = try carol.seal([1], type: "candidate", to: b.publicKey, nowMilliseconds: now + 119_000 + UInt64(i % 500))
            _ = try? bob.open(env, type: "candidate", from: c.publicKey, nowMilliseconds: now)
        }
        let fresh = try alice.seal([2], type: "offer", to: b.publicKey, nowMilliseconds: now)
        #expect(try bob.open(fresh, type: "offer", from: a.publicKey, nowMilliseconds: now) == [2])
    }

    @Test func anOlderMessageAfterANewerOneIsRefused() throws {
        var alice = SealedEnvelope(privateKey: a.privateKey)!, bob = SealedEnvelope(privateKey: b.privateKey)!
        let older = try alice.seal([1], type: "offer", to: b.publicKey, nowMilliseconds: now)
        let newer = try alice.seal([2], type: "offer", to: b.publicKey, nowMilliseconds: now + 3000)
        #expect(try bob.open(newer, type: "offer", from: a.publicKey, nowMilliseconds: now + 3000) == [2])
        #expect(throws: SealedEnvelope.Failure.reordered) { try bob.open(older, type: "offer", from: a.publicKey, nowMilliseconds: now + 3001) }
        // Another type has its own mark: an answer older than the offer still opens.
        let answer = try alice.seal([3], type: "answer", to: b.publicKey, nowMilliseconds: now + 1000)
        #expect(try bob.open(answer, type: "answer", from: a.publicKey, nowMilliseconds: now + 3002) == [3])
    }

    /// The agent saves the marks and restores them after a restart: an envelope opened before
    /// the restart is refused after it, within the window, though the nonce cache is new.
    @Test func marksRestoredAfterARestartRefuseAReplay() throws {
        var alice = SealedEnvelope(privateKey: a.privateKey)!, bob = SealedEnvelope(privateKey: b.privateKey)!
        let env = try alice.seal([1], type: "offer", to: b.publicKey, nowMilliseconds: now)
        _ = try bob.open(env, type: "offer", from: a.publicKey, nowMilliseconds: now)
        let saved = bob.highWater
        var restarted = SealedEnvelope(privateKey: b.privateKey)!
        restarted.restore(saved)
        #expect(throws: SealedEnvelope.Failure.reordered) { try restarted.open(env, type: "offer", from: a.publicKey, nowMilliseconds: now + 5000) }
        let next = try alice.seal([2], type: "offer", to: b.publicKey, nowMilliseconds: now + 6000)
        #expect(try restarted.open(next, type: "offer", from: a.publicKey, nowMilliseconds: now + 6000) == [2])
    }

    /// RFC 8439 §2.8.2's AEAD test vector, so the envelope is ChaCha20-Poly1305 as specified.
    @Test func aeadMatchesRFC8439() {
        let key = Crypto.unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")!
        let nonce = Crypto.unhex("070000004041424344454647")!
        let ad = Crypto.unhex("50515253c0c1c2c3c4c5c6c7")!
        let text = Array("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".utf8)
        let sealed = Crypto.seal(key: key, nonce: nonce, plaintext: text, associatedData: ad)
        #expect(Crypto.hex(Array(sealed.suffix(16))) == "1ae10b594f09e26a7e902ecbd0600691")
        #expect(Crypto.hex(Array(sealed.prefix(16))) == "d31a8d34648e60db7b86afbc53ef7ec2")
        #expect(Crypto.open(key: key, nonce: nonce, sealed: sealed, associatedData: ad) == text)
    }
}
