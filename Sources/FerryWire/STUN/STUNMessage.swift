import FerryCore

extension UnsafeRawBufferPointer {
    @inlinable public func u16(_ offset: Int) -> UInt16 { UInt16(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt16.self)) }
    @inlinable public func u32(_ offset: Int) -> UInt32 { UInt32(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    @inlinable public func u64(_ offset: Int) -> UInt64 { UInt64(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
}

/// A validated, read-only view of one STUN message in a caller's buffer (RFC 8489 §5, §6.3,
/// §14). Parsing allocates nothing; attribute values are slices of the same buffer. The view is
/// valid only while the buffer is.
public struct STUNMessage {
    public enum ParseError: Error, Equatable, Sendable {
        /// Not STUN at all (first two bits, cookie): silently dropped.
        case notSTUN
        /// Shorter than its header says, or longer when the transport gives exact datagrams.
        case badLength
        /// An attribute overruns the message, or attributes are misplaced (FINGERPRINT not last).
        case badAttribute
        /// FINGERPRINT present but wrong.
        case badFingerprint
    }

    public let bytes: UnsafeRawBufferPointer
    public let method: UInt16
    public let messageClass: STUNClass
    public let transactionID: TransactionID
    /// Offset of the MESSAGE-INTEGRITY attribute header, or -1.
    public let integrityOffset: Int
    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute header, or -1.
    public let integritySHA256Offset: Int
    /// Offset of the FINGERPRINT attribute header, or -1.
    public let fingerprintOffset: Int
    /// End of the attributes that count: those after MESSAGE-INTEGRITY(-SHA256) are ignored.
    let attributesEnd: Int

    /// True when bytes start like a STUN message (RFC 8489 §6.3, RFC 7983 demultiplexing):
    /// first two bits 0 and the magic cookie.
    @inlinable
    public static func looksLikeSTUN(_ b: UnsafeRawBufferPointer) -> Bool {
        b.count >= STUN.headerLength && b[0] & 0xC0 == 0 && b.u32(4) == STUN.magicCookie
    }

    /// Total length the header announces (for stream framing), or nil without a full header.
    public static func framedLength(_ b: UnsafeRawBufferPointer) -> Int? {
        b.count >= 4 ? STUN.headerLength + Int(b.u16(2)) : nil
    }

    /// Parses a message. `exact`: the buffer must hold exactly one message (UDP); otherwise
    /// trailing bytes are allowed (a stream read, where the caller frames).
    public static func parse(_ b: UnsafeRawBufferPointer, exact: Bool = true) -> Result<STUNMessage, ParseError> {
        guard looksLikeSTUN(b) else { return .failure(.notSTUN) }
        let length = Int(b.u16(2))
        guard length % 4 == 0, STUN.headerLength + length <= b.count else { return .failure(.badLength) }
        if exact && STUN.headerLength + length != b.count { return .failure(.badLength) }
        let msg = UnsafeRawBufferPointer(rebasing: b[0..<(STUN.headerLength + length)])
        let (method, cls) = STUNType.decode(msg.u16(0))
        let tid = TransactionID(high: msg.u32(8), low: msg.u64(12))
        var integrity = -1, integrity256 = -1, fingerprint = -1
        var end = -1
        var offset = STUN.headerLength
        while offset < msg.count {
            guard offset + 4 <= msg.count else { return .failure(.badAttribute) }
            let type = msg.u16(offset)
            let len = Int(msg.u16(offset + 2))
            let next = offset + 4 + (len + 3) & ~3
            guard next <= msg.count else { return .failure(.badAttribute) }
            if fingerprint >= 0 { return .failure(.badAttribute) }  // FINGERPRINT must be last
            switch type {
            case STUN.Attribute.messageIntegrity where integrity < 0 && integrity256 < 0:
                guard len == 20 else { return .failure(.badAttribute) }
                integrity = offset
                if end < 0 { end = offset }
            case STUN.Attribute.messageIntegritySHA256 where integrity256 < 0:
                // RFC 8489 §14.6: 16 to 32 bytes, a multiple of 4.
                guard len >= 16, len <= 32, len % 4 == 0 else { return .failure(.badAttribute) }
                integrity256 = offset
                if end < 0 { end = offset }
            case STUN.Attribute.fingerprint:
                guard len == 4 else { return .failure(.badAttribute) }
                fingerprint = offset
                if end < 0 { end = offset }
            default:
                break
            }
            offset = next
        }
        if fingerprint >= 0 {
            var crc = CRC32()
            crc.update(UnsafeRawBufferPointer(rebasing: msg[0..<fingerprint]))
            guard crc.value ^ 0x5354_554E == msg.u32(fingerprint + 4) else { return .failure(.badFingerprint) }
        }
        return .success(STUNMessage(bytes: msg, method: method, messageClass: cls, transactionID: tid,
                                    integrityOffset: integrity, integritySHA256Offset: integrity256,
                                    fingerprintOffset: fingerprint, attributesEnd: end < 0 ? msg.count : end))
    }

    /// The value of the first attribute of `type` before the integrity attributes, or nil.
    public func attribute(_ type: UInt16) -> UnsafeRawBufferPointer? {
        var offset = STUN.headerLength
        while offset < attributesEnd {
            let t = bytes.u16(offset)
            let len = Int(bytes.u16(offset + 2))
            if t == type { return UnsafeRawBufferPointer(rebasing: bytes[(offset + 4)..<(offset + 4 + len)]) }
            offset += 4 + (len + 3) & ~3
        }
        return nil
    }

    public func has(_ type: UInt16) -> Bool { attribute(type) != nil }

    /// Comprehension-required attribute types this server does not understand (RFC 8489 §6.3.1).
    public func unknownComprehensionRequired() -> [UInt16] {
        var out: [UInt16] = []
        var offset = STUN.headerLength
        while offset < attributesEnd {
            let t = bytes.u16(offset)
            if t < 0x8000 && !STUN.Attribute.isUnderstood(t) && !out.contains(t) { out.append(t) }
            offset += 4 + (Int(bytes.u16(offset + 2)) + 3) & ~3
        }
        return out
    }

    public func string(_ type: UInt16) -> String? {
        attribute(type).map { String(decoding: $0, as: UTF8.self) }
    }

    public func uint32(_ type: UInt16) -> UInt32? {
        guard let v = attribute(type), v.count == 4 else { return nil }
        return v.u32(0)
    }

    /// An XOR-encoded address attribute (XOR-MAPPED/PEER/RELAYED-ADDRESS), decoded.
    public func xorAddress(_ type: UInt16) -> SocketAddress? {
        attribute(type).flatMap { XORAddress.decode($0, transactionID: transactionID) }
    }

    /// Every XOR-PEER-ADDRESS (CreatePermission may carry several), or nil if one is malformed.
    public func allXORAddresses(_ type: UInt16) -> [SocketAddress]? {
        var out: [SocketAddress] = []
        var offset = STUN.headerLength
        while offset < attributesEnd {
            let t = bytes.u16(offset)
            let len = Int(bytes.u16(offset + 2))
            if t == type {
                guard let a = XORAddress.decode(UnsafeRawBufferPointer(rebasing: bytes[(offset + 4)..<(offset + 4 + len)]),
                                                transactionID: transactionID) else { return nil }
                out.append(a)
            }
            offset += 4 + (len + 3) & ~3
        }
        return out
    }

    /// ERROR-CODE as (code, reason).
    public func errorCode() -> (code: Int, reason: String)? {
        guard let v = attribute(STUN.Attribute.errorCode), v.count >= 4 else { return nil }
        let code = Int(v[2] & 0x7) * 100 + Int(v[3])
        return (code, String(decoding: v[4...], as: UTF8.self))
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) with `key`. False when absent.
    public func verifyIntegrity(key: UnsafeRawBufferPointer) -> Bool {
        guard integrityOffset >= 0 else { return false }
        var mac = (UInt64(0), UInt64(0), UInt32(0))
        return withUnsafeMutableBytes(of: &mac) { out in
            hmacPrefix(upTo: integrityOffset, attributeLength: 20, key: key, sha256: false, into: out.baseAddress!)
            return Crypto.constantTimeEqual(UnsafeRawBufferPointer(rebasing: out[0..<20]),
                                            UnsafeRawBufferPointer(rebasing: bytes[(integrityOffset + 4)..<(integrityOffset + 24)]))
        }
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6), possibly truncated. False when absent.
    public func verifyIntegritySHA256(key: UnsafeRawBufferPointer) -> Bool {
        guard integritySHA256Offset >= 0 else { return false }
        let len = Int(bytes.u16(integritySHA256Offset + 2))
        var mac = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        return withUnsafeMutableBytes(of: &mac) { out in
            hmacPrefix(upTo: integritySHA256Offset, attributeLength: len, key: key, sha256: true, into: out.baseAddress!)
            return Crypto.constantTimeEqual(UnsafeRawBufferPointer(rebasing: out[0..<len]),
                                            UnsafeRawBufferPointer(rebasing: bytes[(integritySHA256Offset + 4)..<(integritySHA256Offset + 4 + len)]))
        }
    }

    /// HMAC over the message up to `offset`, with the header's length field as if the message
    /// ended with this integrity attribute (RFC 8489 §14.5). Copies the prefix to scratch
    /// memory on the stack (control path only).
    private func hmacPrefix(upTo offset: Int, attributeLength: Int, key: UnsafeRawBufferPointer, sha256: Bool, into out: UnsafeMutableRawPointer) {
        withUnsafeTemporaryAllocation(byteCount: offset, alignment: 8) { scratch in
            scratch.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[0..<offset]))
            let adjusted = UInt16(offset - STUN.headerLength + 4 + attributeLength)
            scratch.storeBytes(of: adjusted.bigEndian, toByteOffset: 2, as: UInt16.self)
            if sha256 {
                Crypto.hmacSHA256(key: key, data: UnsafeRawBufferPointer(scratch), into: out)
            } else {
                Crypto.hmacSHA1(key: key, data: UnsafeRawBufferPointer(scratch), into: out)
            }
        }
    }
}

/// XOR-MAPPED-ADDRESS encoding (RFC 8489 §14.2), shared by XOR-PEER-ADDRESS and
/// XOR-RELAYED-ADDRESS (RFC 8656 §18.3, §18.5).
public enum XORAddress {
    public static func decode(_ v: UnsafeRawBufferPointer, transactionID: TransactionID) -> SocketAddress? {
        guard v.count >= 4 else { return nil }
        let port = v.u16(2) ^ UInt16(STUN.magicCookie >> 16)
        switch v[1] {
        case 0x01:
            guard v.count == 8 else { return nil }
            return SocketAddress(ip: IPAddress(ipv4: v.u32(4) ^ STUN.magicCookie), port: port)
        case 0x02:
            guard v.count == 20 else { return nil }
            let high = v.u64(4) ^ (UInt64(STUN.magicCookie) << 32 | UInt64(transactionID.high))
            let low = v.u64(12) ^ transactionID.low
            return SocketAddress(ip: IPAddress(high: high, low: low, isIPv4: false), port: port)
        default:
            return nil
        }
    }

    /// Writes the value (8 or 20 bytes) at `p`; returns its length.
    @discardableResult
    public static func encode(_ a: SocketAddress, transactionID: TransactionID, into p: UnsafeMutableRawPointer) -> Int {
        p.storeBytes(of: UInt8(0), as: UInt8.self)
        p.storeBytes(of: (a.port ^ UInt16(STUN.magicCookie >> 16)).bigEndian, toByteOffset: 2, as: UInt16.self)
        if a.ip.isIPv4 {
            p.storeBytes(of: UInt8(1), toByteOffset: 1, as: UInt8.self)
            p.storeBytes(of: (a.ip.ipv4 ^ STUN.magicCookie).bigEndian, toByteOffset: 4, as: UInt32.self)
            return 8
        }
        p.storeBytes(of: UInt8(2), toByteOffset: 1, as: UInt8.self)
        let high = a.ip.high ^ (UInt64(STUN.magicCookie) << 32 | UInt64(transactionID.high))
        p.storeBytes(of: high.bigEndian, toByteOffset: 4, as: UInt64.self)
        p.storeBytes(of: (a.ip.low ^ transactionID.low).bigEndian, toByteOffset: 12, as: UInt64.self)
        return 20
    }

    public static func encodedLength(_ a: SocketAddress) -> Int { a.ip.isIPv4 ? 8 : 20 }
}
