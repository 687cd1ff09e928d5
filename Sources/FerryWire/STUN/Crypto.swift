import COpenSSL

/// The digests and MACs STUN needs, through OpenSSL's one-shot calls (no context kept, no
/// allocation on Ferry's side). Used on the control path (requests), never per relayed packet.
public enum Crypto {
    /// HMAC-SHA1 (20 bytes) into `out`.
    public static func hmacSHA1(key: UnsafeRawBufferPointer, data: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) {
        hmac(EVP_sha1(), key: key, data: data, into: out)
    }

    /// HMAC-SHA256 (32 bytes) into `out`.
    public static func hmacSHA256(key: UnsafeRawBufferPointer, data: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) {
        hmac(EVP_sha256(), key: key, data: data, into: out)
    }

    static func hmac(_ md: OpaquePointer?, key: UnsafeRawBufferPointer, data: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) {
        var len: UInt32 = 0
        let dataPtr = data.baseAddress?.assumingMemoryBound(to: UInt8.self)
        let result = HMAC(md, key.baseAddress, Int32(key.count), dataPtr, data.count,
                          out.assumingMemoryBound(to: UInt8.self), &len)
        precondition(result != nil, "HMAC failed")
    }

    /// A digest (`EVP_md5()`, `EVP_sha1()`, `EVP_sha256()`) of `data`.
    public static func digest(_ md: OpaquePointer?, _ data: UnsafeRawBufferPointer, size: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: size)
        var len: UInt32 = 0
        let ok = out.withUnsafeMutableBufferPointer { o in
            EVP_Digest(data.baseAddress, data.count, o.baseAddress, &len, md, nil)
        }
        precondition(ok == 1, "EVP_Digest failed")
        return out
    }

    public static func md5(_ bytes: [UInt8]) -> [UInt8] { bytes.withUnsafeBytes { digest(EVP_md5(), $0, size: 16) } }
    public static func sha256(_ bytes: [UInt8]) -> [UInt8] { bytes.withUnsafeBytes { digest(EVP_sha256(), $0, size: 32) } }

    public static func hmacSHA1(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 20)
        key.withUnsafeBytes { k in data.withUnsafeBytes { d in out.withUnsafeMutableBytes { hmacSHA1(key: k, data: d, into: $0.baseAddress!) } } }
        return out
    }

    public static func hmacSHA256(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        key.withUnsafeBytes { k in data.withUnsafeBytes { d in out.withUnsafeMutableBytes { hmacSHA256(key: k, data: d, into: $0.baseAddress!) } } }
        return out
    }

    /// Compares in time independent of where the bytes differ (CRYPTO_memcmp).
    /// The coturn "TURN REST" password a shared secret gives a username:
    /// base64(HMAC-SHA1(secret, username)), what `ferry token`, NetBird, Synapse and Nextcloud compute.
    public static func restPassword(secret: String, username: String) -> String {
        Base64.std(hmacSHA1(key: Array(secret.utf8), data: Array(username.utf8)))
    }

    public static func constantTimeEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        a.count == b.count && (a.count == 0 || CRYPTO_memcmp(a.baseAddress, b.baseAddress, a.count) == 0)
    }

    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.withUnsafeBytes { x in b.withUnsafeBytes { y in constantTimeEqual(x, y) } }
    }

    /// Cryptographically random bytes.
    public static func randomBytes(_ n: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        let ok = out.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(n)) }
        precondition(ok == 1, "RAND_bytes failed")
        return out
    }

    // MARK: AEAD (sealed signaling payloads, docs/signaling.md)

    public static let aeadKeyLength = 32, aeadNonceLength = 12, aeadTagLength = 16

    /// ChaCha20-Poly1305 (RFC 8439): ciphertext ‖ 16-byte tag.
    public static func seal(key: [UInt8], nonce: [UInt8], plaintext: [UInt8], associatedData: [UInt8]) -> [UInt8] {
        precondition(key.count == aeadKeyLength && nonce.count == aeadNonceLength)
        let ctx = EVP_CIPHER_CTX_new()
        defer { EVP_CIPHER_CTX_free(ctx) }
        var out = [UInt8](repeating: 0, count: plaintext.count + aeadTagLength)
        var len: Int32 = 0
        var ok = EVP_EncryptInit_ex(ctx, EVP_chacha20_poly1305(), nil, key, nonce) == 1
        if !associatedData.isEmpty { ok = ok && EVP_EncryptUpdate(ctx, nil, &len, associatedData, Int32(associatedData.count)) == 1 }
        ok = ok && out.withUnsafeMutableBufferPointer { o in
            (plaintext.isEmpty || EVP_EncryptUpdate(ctx, o.baseAddress, &len, plaintext, Int32(plaintext.count)) == 1)
                && EVP_EncryptFinal_ex(ctx, o.baseAddress! + plaintext.count, &len) == 1
                && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, Int32(aeadTagLength), o.baseAddress! + plaintext.count) == 1
        }
        precondition(ok, "ChaCha20-Poly1305 encryption failed")
        return out
    }

    /// The plaintext, or nil when the tag does not verify (wrong key, nonce, data or tampering).
    public static func open(key: [UInt8], nonce: [UInt8], sealed: [UInt8], associatedData: [UInt8]) -> [UInt8]? {
        guard key.count == aeadKeyLength, nonce.count == aeadNonceLength, sealed.count >= aeadTagLength else { return nil }
        let ctx = EVP_CIPHER_CTX_new()
        defer { EVP_CIPHER_CTX_free(ctx) }
        let n = sealed.count - aeadTagLength
        var tag = Array(sealed[n...])
        var out = [UInt8](repeating: 0, count: n + 1)
        var len: Int32 = 0
        guard EVP_DecryptInit_ex(ctx, EVP_chacha20_poly1305(), nil, key, nonce) == 1 else { return nil }
        if !associatedData.isEmpty {
            guard EVP_DecryptUpdate(ctx, nil, &len, associatedData, Int32(associatedData.count)) == 1 else { return nil }
        }
        let ok = out.withUnsafeMutableBufferPointer { o in
            sealed.withUnsafeBufferPointer { s in
                (n == 0 || EVP_DecryptUpdate(ctx, o.baseAddress, &len, s.baseAddress, Int32(n)) == 1)
                    && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, Int32(aeadTagLength), &tag) == 1
                    && EVP_DecryptFinal_ex(ctx, o.baseAddress! + n, &len) == 1
            }
        }
        return ok ? Array(out[0..<n]) : nil
    }

    /// Lower-case hex.
    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    public static func unhex(_ s: String) -> [UInt8]? {
        let chars = Array(s.utf8)
        guard chars.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        var i = 0
        func v(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return nil
            }
        }
        while i < chars.count {
            guard let h = v(chars[i]), let l = v(chars[i + 1]) else { return nil }
            out.append(h << 4 | l)
            i += 2
        }
        return out
    }
}

/// CRC-32 (ISO-HDLC, the zlib polynomial) for STUN's FINGERPRINT, incremental so the header can
/// be fed with its length adjusted without copying the message.
public struct CRC32 {
    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public private(set) var state: UInt32 = 0xFFFF_FFFF
    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        var c = state
        CRC32.table.withUnsafeBufferPointer { t in
            for b in bytes { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        }
        state = c
    }

    public var value: UInt32 { state ^ 0xFFFF_FFFF }
}
