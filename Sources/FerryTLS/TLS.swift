import COpenSSL
import CFerryTLS
import FerrySystem
#if canImport(Glibc)
import Glibc
#endif

/// A TLS problem worth telling an operator (bad certificate, key mismatch): the message is
/// OpenSSL's reason where there is one.
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One certificate chain and its key, as PEM, with what the server learned from it.
public struct CertificatePair: Sendable {
    public let certificatePEM: [UInt8]
    public let keyPEM: [UInt8]
    /// Where it came from (paths, or "self-signed"), for logs.
    public let source: String
    /// DNS names from subjectAltName (else CN): the SNI names it serves.
    public let names: [String]
    /// notAfter, Unix seconds.
    public let notAfter: Int64

    public init(certificatePEM: [UInt8], keyPEM: [UInt8], source: String) throws(TLSError) {
        self.certificatePEM = certificatePEM
        self.keyPEM = keyPEM
        self.source = source
        var buf = [CChar](repeating: 0, count: 4096)
        let n = certificatePEM.withUnsafeBufferPointer { c in
            c.withMemoryRebound(to: CChar.self) { ferry_tls_cert_names($0.baseAddress, $0.count, &buf, buf.count) }
        }
        guard n >= 0 else { throw TLSError("\(source): unreadable certificate") }
        var names: [String] = []
        var start = 0
        for _ in 0..<Int(n) {
            let end = buf[start...].firstIndex(of: 0) ?? buf.count
            names.append(String(decoding: buf[start..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self).lowercased())
            start = end + 1
        }
        self.names = names
        notAfter = certificatePEM.withUnsafeBufferPointer { c in
            c.withMemoryRebound(to: CChar.self) { ferry_tls_cert_not_after($0.baseAddress, $0.count) }
        }
        guard notAfter > 0 else { throw TLSError("\(source): no certificate in PEM") }
    }

    /// Reads a PEM chain and key from files.
    public static func load(certificate: String, key: String) throws(TLSError) -> CertificatePair {
        guard let c = Files.read(certificate) else { throw TLSError("cannot read \(certificate)") }
        guard let k = Files.read(key) else { throw TLSError("cannot read \(key)") }
        return try CertificatePair(certificatePEM: c, keyPEM: k, source: certificate)
    }

    /// A fresh self-signed EC P-256 certificate for `name`, 127.0.0.1 and ::1 (development).
    public static func selfSigned(name: String, days: Int = 30) throws(TLSError) -> CertificatePair {
        var cert: UnsafeMutablePointer<CChar>?
        var key: UnsafeMutablePointer<CChar>?
        guard ferry_tls_self_signed(name, Int32(days), &cert, &key) == 1, let cert, let key else {
            throw TLSError("could not generate a self-signed certificate")
        }
        defer { free(cert); free(key) }
        let c = Array(UnsafeBufferPointer(start: cert, count: strlen(cert))).map { UInt8(bitPattern: $0) }
        let k = Array(UnsafeBufferPointer(start: key, count: strlen(key))).map { UInt8(bitPattern: $0) }
        return try CertificatePair(certificatePEM: c, keyPEM: k, source: "self-signed (\(name))")
    }

}

/// The server side of TLS for one configuration: one OpenSSL context per certificate, the first
/// the default, the others chosen by SNI; ALPN; TLS 1.2 or 1.3 minimum. Immutable once built.
/// A reload builds a new set; connections keep the set they started with (each session holds a
/// reference), so nothing established is dropped and the old contexts go with the last of them.
public final class TLSContextSet: @unchecked Sendable {
    private let contexts: [OpaquePointer]
    private let sni: OpaquePointer?
    public let certificates: [CertificatePair]
    public let alpn: [String]

    public init(certificates: [CertificatePair], alpn: [String], minimumTLS13: Bool = false) throws(TLSError) {
        guard !certificates.isEmpty else { throw TLSError("no certificate") }
        var wire: [UInt8] = []
        for p in alpn {
            let b = Array(p.utf8)
            wire.append(UInt8(b.count))
            wire += b
        }
        var contexts: [OpaquePointer] = []
        for pair in certificates {
            guard let ctx = ferry_tls_server_ctx(minimumTLS13 ? 1 : 0) else { throw TLSError("SSL_CTX_new failed") }
            var err = [CChar](repeating: 0, count: 256)
            let ok = pair.certificatePEM.withUnsafeBufferPointer { c in
                pair.keyPEM.withUnsafeBufferPointer { k in
                    c.withMemoryRebound(to: CChar.self) { cc in
                        k.withMemoryRebound(to: CChar.self) { kk in
                            ferry_tls_use_pem(ctx, cc.baseAddress, cc.count, kk.baseAddress, kk.count, &err, err.count)
                        }
                    }
                }
            }
            if ok != 1 {
                SSL_CTX_free(ctx)
                for c in contexts { SSL_CTX_free(c) }
                let reason = String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                throw TLSError("\(pair.source): \(reason)")
            }
            if !wire.isEmpty { wire.withUnsafeBufferPointer { ferry_tls_set_alpn(ctx, $0.baseAddress, UInt32($0.count)) } }
            contexts.append(ctx)
        }
        if contexts.count > 1 {
            let table = ferry_sni_table_new(Int32(certificates.reduce(0) { $0 + $1.names.count }))
            for (pair, ctx) in zip(certificates, contexts) {
                for name in pair.names { ferry_sni_table_add(table, name, ctx) }
            }
            ferry_tls_set_sni(contexts[0], table)
            sni = table
        } else {
            sni = nil
        }
        self.contexts = contexts
        self.certificates = certificates
        self.alpn = alpn
    }

    deinit {
        for c in contexts { SSL_CTX_free(c) }
        if let sni { ferry_sni_table_free(sni) }
    }

    /// A server session on a connected socket: it reads from `fd` and appends every record it
    /// writes to `output`, which the caller writes to the socket.
    public func session(fd: Int32, output: OutputQueue) -> TLSSession? {
        guard let ssl = SSL_new(contexts[0]) else { return nil }
        guard ferry_tls_set_io(ssl, fd, output.storage) == 1 else {
            SSL_free(ssl)
            return nil
        }
        SSL_set_accept_state(ssl)
        return TLSSession(ssl: ssl, contexts: self)
    }

    /// The earliest notAfter among the certificates (Unix seconds).
    public var earliestExpiry: Int64 { certificates.map(\.notAfter).min() ?? 0 }
}

/// One TLS connection's OpenSSL state, driven by a non-blocking socket. Owned by the worker
/// that owns the connection; OpenSSL's error queue is per thread, so it is read here, on the
/// thread that failed.
public final class TLSSession {
    private let ssl: OpaquePointer
    /// Keeps the contexts (and the SNI table) alive for this connection.
    private let contexts: TLSContextSet

    init(ssl: OpaquePointer, contexts: TLSContextSet) {
        self.ssl = ssl
        self.contexts = contexts
    }

    deinit { SSL_free(ssl) }

    public enum Progress: Equatable {
        case done
        case wantRead
        case wantWrite
        /// The peer closed (close_notify or EOF).
        case closed
        case failed(String)
    }

    private func progress(_ rc: Int32) -> Progress {
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_NONE: return .done
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        case SSL_ERROR_ZERO_RETURN: return .closed
        case SSL_ERROR_SYSCALL:
            let e = errno
            ERR_clear_error()
            return e == 0 ? .closed : .failed("syscall: errno \(e)")
        default:
            var err = [CChar](repeating: 0, count: 256)
            ferry_tls_last_error(&err, err.count)
            return .failed(String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
    }

    public func handshake() -> Progress {
        let rc = SSL_do_handshake(ssl)
        return rc == 1 ? .done : progress(rc)
    }

    /// Reads decrypted bytes; `(n, .done)` with n > 0, or `(0, progress)`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> (Int, Progress) {
        var n = 0
        let rc = SSL_read_ex(ssl, buffer.baseAddress, buffer.count, &n)
        return rc == 1 ? (n, .done) : (0, progress(rc))
    }

    /// Encrypts `buffer` into records appended to the session's output queue (one record per
    /// call up to 16 KiB); `.done`, or `.failed` when the session is unusable. Never blocks.
    public func write(_ buffer: UnsafeRawBufferPointer) -> Progress {
        guard buffer.count > 0 else { return .done }
        var n = 0
        let rc = SSL_write_ex(ssl, buffer.baseAddress, buffer.count, &n)
        return rc == 1 ? .done : progress(rc)
    }

    /// Bytes already decrypted and buffered inside OpenSSL (read them before waiting on epoll).
    public var pending: Int { Int(SSL_pending(ssl)) }

    public var alpn: String? {
        var buf = [CChar](repeating: 0, count: 256)
        let n = ferry_tls_selected_alpn(ssl, &buf, buf.count)
        return n > 0 ? String(decoding: buf[0..<Int(n)].map { UInt8(bitPattern: $0) }, as: UTF8.self) : nil
    }

    public var version: String { String(cString: ferry_tls_version(ssl)) }

    public var serverName: String? {
        guard let p = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) else { return nil }
        return String(cString: p)
    }

    /// Queues a close_notify alert in the output queue.
    public func shutdown() { _ = SSL_shutdown(ssl) }
}

/// Bytes owed to one socket, in C memory so a TLS session can append its records there (see
/// `ferry_tls_set_io`). Storage is freed whenever the queue empties. A plain pointer wrapper,
/// no reference counting: the owner calls `deallocate()` once, after the TLS session is gone.
public struct OutputQueue {
    let storage: UnsafeMutablePointer<ferry_outbuf>

    public init() {
        storage = .allocate(capacity: 1)
        storage.initialize(to: ferry_outbuf(data: nil, start: 0, end: 0, cap: 0))
    }

    public func deallocate() {
        ferry_outbuf_free(storage)
        storage.deallocate()
    }

    /// Bytes queued and not yet written.
    @inline(__always) public var count: Int { storage.pointee.end - storage.pointee.start }

    /// Appends; false when memory could not be had.
    @inline(__always) public func append(_ bytes: UnsafeRawBufferPointer) -> Bool {
        ferry_outbuf_append(storage, bytes.baseAddress, bytes.count) == 1
    }

    /// The unwritten bytes (valid until the next append or consume).
    @inline(__always) public var pending: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: storage.pointee.data.map { $0 + storage.pointee.start }, count: count)
    }

    /// Drops `n` written bytes from the front; frees the storage when none are left.
    @inline(__always) public func consume(_ n: Int) { ferry_outbuf_consume(storage, n) }
}
