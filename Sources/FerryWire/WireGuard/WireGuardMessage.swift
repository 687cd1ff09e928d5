import COpenSSL

/// WireGuard's four message types as they appear on the wire (the WireGuard paper §5.4;
/// wireguard-go `device/noise-protocol.go`): a little-endian 32-bit type (1–4: one type byte and
/// three zero bytes), then fixed fields. The native relay reads only what routing needs: the type,
/// the sender and receiver indices, and an initiation's or response's mac1, which anyone who
/// knows the receiver's public key can check (it names the responder; it authenticates nothing).
public enum WireGuardMessage {
    public enum Kind: UInt8, Sendable {
        case initiation = 1, response = 2, cookieReply = 3, transportData = 4
    }

    public static let initiationLength = 148
    public static let responseLength = 92
    public static let cookieReplyLength = 64
    /// A keepalive: the 16-byte header and an empty payload's 16-byte tag.
    public static let minimumDataLength = 32

    /// The message's kind when `bytes` is a well-formed WireGuard message: the exact type word
    /// and, per type, the exact length (data: 16-byte header, then a ciphertext of
    /// at least its 16-byte tag; not necessarily a multiple of 16: wireguard-go pads to 16 but
    /// never past the MTU, and 1420 is not a multiple). Nil for anything else.
    @inlinable
    public static func kind(_ p: UnsafeRawPointer, length n: Int) -> Kind? {
        guard n >= minimumDataLength else { return nil }
        switch UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)) {
        case 1: return n == initiationLength ? .initiation : nil
        case 2: return n == responseLength ? .response : nil
        case 3: return n == cookieReplyLength ? .cookieReply : nil
        case 4: return .transportData
        default: return nil
        }
    }

    /// The sender index (initiation, response): bytes 4–7, little-endian.
    @inlinable public static func senderIndex(_ p: UnsafeRawPointer) -> UInt32 {
        UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
    }

    /// The receiver index: bytes 8–11 of a response, 4–7 of a cookie reply or data message.
    @inlinable public static func receiverIndex(_ p: UnsafeRawPointer, _ kind: Kind) -> UInt32 {
        UInt32(littleEndian: p.loadUnaligned(fromByteOffset: kind == .response ? 8 : 4, as: UInt32.self))
    }

    /// Where mac1 starts: it covers every byte before it.
    @inlinable public static func mac1Offset(_ kind: Kind) -> Int { kind == .initiation ? 116 : 60 }

    /// BLAKE2s-256("mac1----" ‖ public key): the key a receiver's mac1 is made with.
    public static func mac1Key(publicKey: UnsafeRawBufferPointer) -> [UInt8] {
        precondition(publicKey.count == 32)
        var input = Array("mac1----".utf8)
        input.append(contentsOf: publicKey)
        return input.withUnsafeBytes { Crypto.digest(EVP_blake2s256(), $0, size: 32) }
    }

    public static func mac1Key(publicKey: [UInt8]) -> [UInt8] { publicKey.withUnsafeBytes { mac1Key(publicKey: $0) } }

    /// A handshake initiation from `sender` whose mac1 names `responder` (its public key), the
    /// rest random: what `ferry probe` and `ferry bench` send through a native relay, which reads
    /// only the type, the index and mac1.
    public static func initiation(sender: UInt32, responder: [UInt8]) -> [UInt8] {
        var m = [UInt8](repeating: 0, count: initiationLength)
        m[0] = 1
        withUnsafeBytes(of: sender.littleEndian) { for i in 0..<4 { m[4 + i] = $0[i] } }
        m.replaceSubrange(8..<116, with: Crypto.randomBytes(108))
        sealMAC1(&m, .initiation, key: responder)
        return m
    }

    /// A handshake response from `sender` to the initiator's index `receiver`, mac1 for the
    /// initiator's public key (the same use as `initiation`).
    public static func response(sender: UInt32, receiver: UInt32, initiator: [UInt8]) -> [UInt8] {
        var m = [UInt8](repeating: 0, count: responseLength)
        m[0] = 2
        withUnsafeBytes(of: sender.littleEndian) { for i in 0..<4 { m[4 + i] = $0[i] } }
        withUnsafeBytes(of: receiver.littleEndian) { for i in 0..<4 { m[8 + i] = $0[i] } }
        m.replaceSubrange(12..<60, with: Crypto.randomBytes(48))
        sealMAC1(&m, .response, key: initiator)
        return m
    }

    static func sealMAC1(_ m: inout [UInt8], _ kind: Kind, key publicKey: [UInt8]) {
        let key = mac1Key(publicKey: publicKey), offset = mac1Offset(kind)
        m.withUnsafeMutableBytes { b in
            key.withUnsafeBytes { Crypto.blake2sMAC16(key: $0, data: UnsafeRawBufferPointer(rebasing: b[0..<offset]), into: b.baseAddress! + offset) }
        }
    }

    /// Whether an initiation's or response's mac1 was made for `mac1Key`'s owner (constant time).
    public static func mac1Matches(_ p: UnsafeRawPointer, _ kind: Kind, mac1Key: UnsafeRawBufferPointer) -> Bool {
        var mac = (UInt64(0), UInt64(0))
        let offset = mac1Offset(kind)
        return withUnsafeMutableBytes(of: &mac) { out in
            Crypto.blake2sMAC16(key: mac1Key, data: UnsafeRawBufferPointer(start: p, count: offset), into: out.baseAddress!)
            return Crypto.constantTimeEqual(UnsafeRawBufferPointer(out), UnsafeRawBufferPointer(start: p + offset, count: 16))
        }
    }
}

extension Crypto {
    /// Keyed BLAKE2s with a 16-byte output (WireGuard's MAC), through OpenSSL 3's BLAKE2SMAC.
    public static func blake2sMAC16(key: UnsafeRawBufferPointer, data: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) {
        var size = 16
        var outLength = 0
        let ok = "size".withCString { name in
            withUnsafeMutablePointer(to: &size) { sizePtr in
                var params = [OSSL_PARAM_construct_size_t(name, sizePtr), OSSL_PARAM_construct_end()]
                return EVP_Q_mac(nil, "BLAKE2SMAC", nil, nil, &params, key.baseAddress, key.count,
                                 data.baseAddress?.assumingMemoryBound(to: UInt8.self), data.count,
                                 out.assumingMemoryBound(to: UInt8.self), 16, &outLength) != nil
            }
        }
        precondition(ok && outLength == 16, "BLAKE2SMAC failed")
    }
}
