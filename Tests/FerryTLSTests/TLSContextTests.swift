import Testing
import FerryTLS
#if canImport(Glibc)
import Glibc
#endif

@Suite struct TLSContexts {
    @Test func selfSignedCertificateHasNamesAndExpiry() throws {
        let pair = try CertificatePair.selfSigned(name: "relay.test", days: 7)
        #expect(pair.names == ["relay.test"])
        let now = Int64(time(nil))
        #expect(pair.notAfter > now + 6 * 86400 && pair.notAfter <= now + 7 * 86400 + 60)
        #expect(String(decoding: pair.certificatePEM, as: UTF8.self).hasPrefix("-----BEGIN CERTIFICATE-----"))
    }

    @Test func contextsBuildWithSNIAndALPN() throws {
        let a = try CertificatePair.selfSigned(name: "a.test")
        let b = try CertificatePair.selfSigned(name: "b.test")
        let set = try TLSContextSet(certificates: [a, b], alpn: ["stun.turn", "http/1.1"])
        #expect(set.certificates.count == 2)
        #expect(set.earliestExpiry == min(a.notAfter, b.notAfter))
    }

    @Test func mismatchedKeyIsRefusedWithAReason() throws {
        let a = try CertificatePair.selfSigned(name: "a.test")
        let b = try CertificatePair.selfSigned(name: "b.test")
        let mixed = try CertificatePair(certificatePEM: a.certificatePEM, keyPEM: b.keyPEM, source: "mixed.pem")
        do {
            _ = try TLSContextSet(certificates: [mixed], alpn: [])
            Issue.record("a key that does not match was accepted")
        } catch {
            #expect(error.message.hasPrefix("mixed.pem: "))
            #expect(error.message.contains("does not match") || error.message.contains("mismatch"))
        }
    }

    @Test func garbageIsRefused() {
        #expect(throws: TLSError.self) {
            _ = try CertificatePair(certificatePEM: Array("not a certificate".utf8), keyPEM: [], source: "junk")
        }
        #expect(throws: TLSError.self) { _ = try CertificatePair.load(certificate: "/nonexistent.pem", key: "/nonexistent.key") }
    }
}
