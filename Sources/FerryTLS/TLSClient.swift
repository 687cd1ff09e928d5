import CFerryTLS
#if canImport(Glibc)
import Glibc
#endif

/// A TLS client over a connected socket, with deadlines (`ferry probe`; blocking calls, never on
/// a server worker). The handshake completes whatever the certificate: `verification` says
/// whether the chain and host verified, so a caller both refuses an unverified server and can
/// say what it presented.
public final class TLSClient {
    private let c: OpaquePointer

    public struct Certificate: Sendable, Equatable {
        public let names: [String]
        public let notAfter: Int64
        /// "subject <- issuer" for each certificate the server sent, leaf first.
        public let chain: [String]
    }

    public init(fd: Int32, host: String, caFile: String?, alpn: [String] = [], timeoutMilliseconds: Int32) throws(TLSError) {
        var wire: [UInt8] = []
        for p in alpn { wire.append(UInt8(p.utf8.count)); wire += p.utf8 }
        var err = [CChar](repeating: 0, count: 256)
        guard let c = ferry_tls_client_connect(fd, host, caFile ?? "", wire, UInt32(wire.count), timeoutMilliseconds, &err, err.count) else {
            throw TLSError(Self.text(err))
        }
        self.c = c
    }

    deinit { ferry_tls_client_free(c) }

    static func text(_ buf: [CChar]) -> String {
        String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func list(_ buf: [CChar], count: Int32) -> [String] {
        var out: [String] = [], start = 0
        for _ in 0..<max(0, count) {
            let end = buf[start...].firstIndex(of: 0) ?? buf.count
            out.append(String(decoding: buf[start..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self))
            start = end + 1
        }
        return out
    }

    /// nil when the chain verified against the CAs and matches the host; else OpenSSL's reason.
    public var verificationFailure: String? {
        var buf = [CChar](repeating: 0, count: 256)
        return ferry_tls_client_verify(c, &buf, buf.count) == 0 ? nil : Self.text(buf)
    }

    public var certificate: Certificate {
        var names = [CChar](repeating: 0, count: 4096), chain = [CChar](repeating: 0, count: 4096)
        let n = ferry_tls_client_names(c, &names, names.count)
        let m = ferry_tls_client_chain(c, &chain, chain.count)
        return Certificate(names: Self.list(names, count: n), notAfter: ferry_tls_client_not_after(c), chain: Self.list(chain, count: m))
    }

    public var version: String { String(cString: ferry_tls_client_version(c)) }

    public func write(_ bytes: UnsafeRawBufferPointer, timeoutMilliseconds: Int32) throws(TLSError) {
        var err: CChar = 0
        guard ferry_tls_client_write(c, bytes.baseAddress, bytes.count, timeoutMilliseconds, &err, 1) == 1 else { throw TLSError("TLS write failed") }
    }

    public func write(_ bytes: [UInt8], timeoutMilliseconds: Int32) throws(TLSError) {
        var err = [CChar](repeating: 0, count: 256)
        guard ferry_tls_client_write(c, bytes, bytes.count, timeoutMilliseconds, &err, err.count) == 1 else { throw TLSError(Self.text(err)) }
    }

    /// Reads into `buffer` without allocating (the tunnel's relay path): bytes read, 0 when the
    /// server closed, nil when nothing came within the timeout (0: do not wait).
    public func read(into buffer: UnsafeMutableRawBufferPointer, timeoutMilliseconds: Int32) throws(TLSError) -> Int? {
        var err: CChar = 0
        let n = ferry_tls_client_read(c, buffer.baseAddress, buffer.count, timeoutMilliseconds, &err, 1)
        if n == -2 { return nil }
        if n < 0 { throw TLSError("TLS read failed") }
        return n
    }

    /// Some bytes (waiting up to the timeout); empty when the server closed; nil on timeout.
    public func read(max: Int = 65536, timeoutMilliseconds: Int32) throws(TLSError) -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: max)
        var err = [CChar](repeating: 0, count: 256)
        let n = ferry_tls_client_read(c, &buf, max, timeoutMilliseconds, &err, err.count)
        if n == -2 { return nil }
        if n < 0 { throw TLSError(Self.text(err)) }
        return Array(buf[0..<n])
    }
}
