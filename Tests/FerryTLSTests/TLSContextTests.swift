import Testing
import FerryTLS
import COpenSSL
import CFerryTLS
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
        // A real handshake per case: SNI picks the certificate, ALPN the protocol.
        let viaB = try Handshake(set, serverName: "b.test", alpn: ["http/1.1"])
        #expect(viaB.clientSawName == "b.test" && viaB.server.serverName == "b.test" && viaB.server.alpn == "http/1.1")
        let viaA = try Handshake(set, serverName: "a.test", alpn: ["stun.turn", "http/1.1"])
        #expect(viaA.clientSawName == "a.test" && viaA.server.alpn == "stun.turn", "the server's preference wins")
        let unknown = try Handshake(set, serverName: "c.test", alpn: ["h2"])
        #expect(unknown.clientSawName == "a.test" && unknown.server.alpn == nil, "unknown name: the default; no common protocol: none")
    }

    @Test func eachWriteIsItsOwnRecordAndAllLeaveTogether() throws {
        let set = try TLSContextSet(certificates: [try CertificatePair.selfSigned(name: "a.test")], alpn: ["stun.turn"])
        let h = try Handshake(set, serverName: "a.test", alpn: ["stun.turn"])
        #expect(h.output.count == 0, "the handshake flights were written")
        let messages: [[UInt8]] = [Array(repeating: 1, count: 1204), Array(repeating: 2, count: 100), Array(repeating: 3, count: 20)]
        for m in messages { #expect(m.withUnsafeBytes { h.server.write($0) } == .done) }
        // Three application-data records (type 23) sit in the queue, one per write.
        var records = 0
        var at = 0
        let queued = Array(h.output.pending)
        while at + 5 <= queued.count {
            #expect(queued[at] == 23)
            records += 1
            at += 5 + Int(queued[at + 3]) << 8 + Int(queued[at + 4])
        }
        #expect(records == 3 && at == queued.count)
        h.flush()
        for m in messages { #expect(h.clientRead() == m, "one SSL_read, one message") }
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

/// A client (OpenSSL directly) and a server session (FerryTLS, writing into its output queue)
/// over a socketpair, handshaken in lock step.
final class Handshake {
    private(set) var server: TLSSession!
    let output = OutputQueue()
    private let client: OpaquePointer
    private let clientContext: OpaquePointer
    private let fds: (server: Int32, client: Int32)
    private(set) var clientSawName: String?

    init(_ set: TLSContextSet, serverName: String, alpn: [String]) throws {
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else { throw TLSError("socketpair") }
        fds = (pair[0], pair[1])
        _ = fcntl(fds.server, F_SETFL, O_NONBLOCK)
        _ = fcntl(fds.client, F_SETFL, O_NONBLOCK)
        guard let session = set.session(fd: fds.server, output: output) else { throw TLSError("session") }
        server = session
        clientContext = SSL_CTX_new(TLS_client_method())!
        client = SSL_new(clientContext)!
        SSL_set_fd(client, fds.client)
        var name = Array(serverName.utf8CString)
        _ = name.withUnsafeMutableBytes { SSL_ctrl(client, SSL_CTRL_SET_TLSEXT_HOSTNAME, Int(TLSEXT_NAMETYPE_host_name), $0.baseAddress) }
        var wire: [UInt8] = []
        for p in alpn { wire.append(UInt8(p.utf8.count)); wire += Array(p.utf8) }
        _ = SSL_set_alpn_protos(client, wire, UInt32(wire.count))
        SSL_set_connect_state(client)
        var serverDone = false
        var clientDone = false
        for _ in 0..<50 where !(serverDone && clientDone) {
            if !clientDone { clientDone = SSL_do_handshake(client) == 1 }
            if !serverDone {
                let p = server.handshake()
                if case .failed(let why) = p { throw TLSError(why) }
                serverDone = p == .done
            }
            flush()
        }
        guard serverDone && clientDone else { throw TLSError("handshake did not finish") }
        if let cert = SSL_get1_peer_certificate(client) {
            var subject = [CChar](repeating: 0, count: 256)
            _ = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, &subject, Int32(subject.count))
            clientSawName = String(decoding: subject.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            X509_free(cert)
        }
    }

    deinit {
        server = nil  // before the queue its records go to, as StreamConnection does
        output.deallocate()
        SSL_free(client)
        SSL_CTX_free(clientContext)
        close(fds.server)
        close(fds.client)
    }

    /// Writes the server's queued records to the socket, as the connection's flush does.
    func flush() {
        while output.count > 0 {
            let n = send(fds.server, output.pending.baseAddress, output.count, 0)
            guard n > 0 else { return }
            output.consume(n)
        }
    }

    func clientRead() -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = SSL_read(client, &buffer, Int32(buffer.count))
        return n > 0 ? Array(buffer[0..<Int(n)]) : []
    }
}
