import FerryCore

/// Writes one STUN message into a caller's buffer, keeping the header's length current.
/// Allocates nothing. When the buffer is too small, `overflow` is set and later appends do
/// nothing; the caller drops the message.
public struct STUNWriter {
    public let base: UnsafeMutableRawPointer
    public let capacity: Int
    public private(set) var count: Int
    public private(set) var overflow = false
    public let transactionID: TransactionID

    public init(into buffer: UnsafeMutableRawBufferPointer, method: UInt16, class c: STUNClass, transactionID: TransactionID) {
        precondition(buffer.count >= STUN.headerLength)
        base = buffer.baseAddress!
        capacity = buffer.count
        count = STUN.headerLength
        self.transactionID = transactionID
        base.storeBytes(of: STUNType.encode(method: method, class: c).bigEndian, as: UInt16.self)
        base.storeBytes(of: UInt16(0), toByteOffset: 2, as: UInt16.self)
        base.storeBytes(of: STUN.magicCookie.bigEndian, toByteOffset: 4, as: UInt32.self)
        base.storeBytes(of: transactionID.high.bigEndian, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: transactionID.low.bigEndian, toByteOffset: 12, as: UInt64.self)
    }

    /// The message written so far.
    public var message: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// Appends an attribute whose value `write` fills (exactly `length` bytes); pads with zeros.
    public mutating func append(_ type: UInt16, length: Int, _ write: (UnsafeMutableRawPointer) -> Void) {
        let padded = (length + 3) & ~3
        guard !overflow, count + 4 + padded <= capacity, length <= 0xFFFF else {
            overflow = true
            return
        }
        let p = base + count
        p.storeBytes(of: type.bigEndian, as: UInt16.self)
        p.storeBytes(of: UInt16(length).bigEndian, toByteOffset: 2, as: UInt16.self)
        write(p + 4)
        for i in length..<padded { (p + 4 + i).storeBytes(of: UInt8(0), as: UInt8.self) }
        count += 4 + padded
        base.storeBytes(of: UInt16(count - STUN.headerLength).bigEndian, toByteOffset: 2, as: UInt16.self)
    }

    public mutating func append(_ type: UInt16, bytes: UnsafeRawBufferPointer) {
        append(type, length: bytes.count) { p in
            if let b = bytes.baseAddress { p.copyMemory(from: b, byteCount: bytes.count) }
        }
    }

    public mutating func append(_ type: UInt16, string: String) {
        var s = string
        s.withUTF8 { append(type, bytes: UnsafeRawBufferPointer($0)) }
    }

    public mutating func append(_ type: UInt16, uint32 value: UInt32) {
        append(type, length: 4) { $0.storeBytes(of: value.bigEndian, as: UInt32.self) }
    }

    public mutating func append(_ type: UInt16, xorAddress a: SocketAddress) {
        let tid = transactionID
        append(type, length: XORAddress.encodedLength(a)) { XORAddress.encode(a, transactionID: tid, into: $0) }
    }

    /// ERROR-CODE (RFC 8489 §14.8): class and number, then a reason phrase.
    public mutating func appendErrorCode(_ code: Int, reason: String? = nil) {
        var text = reason ?? STUN.ErrorCode.reason(code)
        text.withUTF8 { r in
            append(STUN.Attribute.errorCode, length: 4 + r.count) { p in
                p.storeBytes(of: UInt16(0), as: UInt16.self)
                p.storeBytes(of: UInt8(code / 100), toByteOffset: 2, as: UInt8.self)
                p.storeBytes(of: UInt8(code % 100), toByteOffset: 3, as: UInt8.self)
                if let b = r.baseAddress { (p + 4).copyMemory(from: b, byteCount: r.count) }
            }
        }
    }

    public mutating func appendUnknownAttributes(_ types: [UInt16]) {
        append(STUN.Attribute.unknownAttributes, length: 2 * types.count) { p in
            for (i, t) in types.enumerated() { p.storeBytes(of: t.bigEndian, toByteOffset: 2 * i, as: UInt16.self) }
        }
    }

    /// MESSAGE-INTEGRITY over everything so far (RFC 8489 §14.5).
    public mutating func appendMessageIntegrity(key: UnsafeRawBufferPointer) {
        guard !overflow, count + 24 <= capacity else { overflow = true; return }
        let prefix = count
        base.storeBytes(of: UInt16(prefix + 24 - STUN.headerLength).bigEndian, toByteOffset: 2, as: UInt16.self)
        let data = UnsafeRawBufferPointer(start: base, count: prefix)
        append(STUN.Attribute.messageIntegrity, length: 20) { p in Crypto.hmacSHA1(key: key, data: data, into: p) }
    }

    /// MESSAGE-INTEGRITY-SHA256, full 32 bytes (RFC 8489 §14.6).
    public mutating func appendMessageIntegritySHA256(key: UnsafeRawBufferPointer) {
        guard !overflow, count + 36 <= capacity else { overflow = true; return }
        let prefix = count
        base.storeBytes(of: UInt16(prefix + 36 - STUN.headerLength).bigEndian, toByteOffset: 2, as: UInt16.self)
        let data = UnsafeRawBufferPointer(start: base, count: prefix)
        append(STUN.Attribute.messageIntegritySHA256, length: 32) { p in Crypto.hmacSHA256(key: key, data: data, into: p) }
    }

    /// FINGERPRINT (RFC 8489 §14.7): CRC-32 of everything so far XOR 0x5354554e.
    public mutating func appendFingerprint() {
        guard !overflow, count + 8 <= capacity else { overflow = true; return }
        let prefix = count
        base.storeBytes(of: UInt16(prefix + 8 - STUN.headerLength).bigEndian, toByteOffset: 2, as: UInt16.self)
        var crc = CRC32()
        crc.update(UnsafeRawBufferPointer(start: base, count: prefix))
        let value = crc.value ^ 0x5354_554E
        append(STUN.Attribute.fingerprint, uint32: value)
    }
}

extension STUNWriter {
    /// Builds a message into a new array (tests, clients, rare control answers).
    public static func build(method: UInt16, class c: STUNClass, transactionID: TransactionID = .random(),
                             capacity: Int = 1500, _ body: (inout STUNWriter) -> Void) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: capacity)
        let n = out.withUnsafeMutableBytes { buf -> Int in
            var w = STUNWriter(into: buf, method: method, class: c, transactionID: transactionID)
            body(&w)
            return w.overflow ? 0 : w.count
        }
        return Array(out[0..<n])
    }
}
