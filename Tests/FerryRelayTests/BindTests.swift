import Testing
import FerryCore
import FerryWire
@testable import FerryRelay

/// Credentials any relay of a network checks alone, and the stateless challenge that ties a
/// bind to its source address.
@Suite struct Credentials {
    let key = WireGuardKey(Crypto.randomBytes(32))

    func parse(_ bytes: [UInt8], now: UInt64 = 1000) -> Result<RelayCredential, RelayCredential.Refusal> {
        bytes.withUnsafeBytes { RelayCredential.parse($0, now: now) }
    }

    @Test func aTokenParsesUntilItExpires() {
        let c = RelayCredential(expiry: 2000, key: key, network: "acme")
        #expect(parse(c.token) == .success(c))
        #expect(parse(c.token, now: 2000) == .failure(.expired))
        #expect(parse(Array(c.token.dropLast())) == .failure(.malformed))
        #expect(parse(c.token + [0]) == .failure(.malformed))
        var v2 = c.token; v2[0] = 2
        #expect(parse(v2) == .failure(.malformed))
        #expect(parse([]) == .failure(.malformed))
        #expect(parse(RelayCredential(expiry: 2000, key: key, network: "").token) == .success(RelayCredential(expiry: 2000, key: key, network: "")))
    }

    @Test func theKeyDependsOnTheSecretAndEveryByteOfTheToken() {
        let token = RelayCredential(expiry: 2000, key: key, network: "acme").token
        let k = RelayCredential.integrityKey(secret: "s3cret", token: token)
        #expect(k.count == 32)
        #expect(RelayCredential.integrityKey(secret: "s3cret", token: token) == k)
        #expect(RelayCredential.integrityKey(secret: "other", token: token) != k)
        for i in [0, 5, 20, 41, token.count - 1] {
            var t = token
            t[i] ^= 0x40
            #expect(RelayCredential.integrityKey(secret: "s3cret", token: t) != k, "byte \(i)")
        }
        // Not the TURN REST password of the same secret (another MAC, another label).
        #expect(Crypto.hmacSHA1(key: Array("s3cret".utf8), data: token) != Array(k.prefix(20)))
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
