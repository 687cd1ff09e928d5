import Testing
import FerryCore
import FerryWire
@testable import FerryRelay

/// Credentials any relay of a network checks alone, and the stateless challenge that ties a
/// bind to its source address.
@Suite struct Credentials {
    let key = WireGuardKey(Crypto.randomBytes(32))

    func verify(_ bytes: [UInt8], secrets: [String] = ["s3cret"], now: UInt64 = 1000) -> Result<RelayCredential, RelayCredential.Refusal> {
        bytes.withUnsafeBytes { RelayCredential.verify($0, secrets: secrets.map { Array($0.utf8) }, now: now) }
    }

    @Test func aCredentialVerifiesWithItsSecretUntilItExpires() {
        let c = RelayCredential(expiry: 2000, key: key, network: "acme")
        let bytes = c.encoded(secret: "s3cret")
        #expect(verify(bytes) == .success(c))
        #expect(verify(bytes, secrets: ["old", "s3cret"]) == .success(c))
        #expect(verify(bytes, secrets: ["other"]) == .failure(.badMAC))
        #expect(verify(bytes, now: 2000) == .failure(.expired))
    }

    @Test func aChangedByteOrAForeignShapeIsRefused() {
        let bytes = RelayCredential(expiry: 2000, key: key, network: "acme").encoded(secret: "s3cret")
        for i in [0, 5, 20, 41, 43, bytes.count - 1] {
            var t = bytes
            t[i] ^= 0x40
            #expect(verify(t).isFailure, "byte \(i)")
        }
        #expect(verify(Array(bytes.dropLast())) == .failure(.malformed))
        #expect(verify(bytes + [0]) == .failure(.malformed))
        #expect(verify([]) == .failure(.malformed))
        // A TURN REST password for the same secret is no credential (a different MAC and label).
        #expect(verify(Array(Crypto.restPassword(secret: "s3cret", username: "2000:x").utf8)) == .failure(.malformed))
    }
}

@Suite struct Cookies {
    let a = SocketAddress("198.51.100.7:51820")!
    let b = SocketAddress("198.51.100.7:51821")!

    /// Nil when the cookie is accepted.
    func check(_ c: BindCookies, _ cookie: [UInt8], _ from: SocketAddress, _ now: UInt32) -> BindCookies.Refusal? {
        switch cookie.withUnsafeBytes({ c.check($0, from: from, now: now) }) {
        case .success: return nil
        case .failure(let r): return r
        }
    }

    @Test func aCookieWorksOnlyFromItsAddressAndOnlyForAWhile() {
        let c = BindCookies(now: 1000, key: Crypto.randomBytes(32))
        let cookie = c.make(for: a, now: 1000)
        #expect(check(c, cookie, a, 1000) == nil)
        #expect(check(c, cookie, a, 1000 + RelayProtocol.cookieLifetime) == nil)
        #expect(check(c, cookie, b, 1000) == .wrongSource)
        #expect(check(c, cookie, SocketAddress("198.51.100.8:51820")!, 1000) == .wrongSource)
        #expect(check(c, cookie, a, 1001 + RelayProtocol.cookieLifetime) == .stale)
        #expect(check(c, cookie, a, 999) == .stale)
        var forged = cookie
        forged[3] &+= 1  // a later time with the old MAC
        #expect(check(c, forged, a, 1001) == .wrongSource)
        #expect(check(c, Array(cookie.dropLast()), a, 1000) == .malformed)
    }

    @Test func theKeyRotatesAndThePreviousOneStillChecksFreshCookies() {
        var c = BindCookies(now: 119, key: Crypto.randomBytes(32))
        let cookie = c.make(for: a, now: 119)
        #expect(c.needsRotation(now: 120))
        c.rotate(now: 120, key: Crypto.randomBytes(32))
        #expect(check(c, cookie, a, 125) == nil)
        c.rotate(now: 240, key: Crypto.randomBytes(32))
        #expect(check(c, cookie, a, 125) == .stale)
        // Another relay process (another key) never accepts this one's cookies.
        let other = BindCookies(now: 240, key: Crypto.randomBytes(32))
        #expect(check(other, c.make(for: a, now: 240), a, 241) == .wrongSource)
    }
}

extension Result {
    var isSuccess: Bool { if case .success = self { return true } else { return false } }
    var isFailure: Bool { !isSuccess }
}
