/// Framing of STUN and ChannelData on a byte stream (TURN over TCP and TLS, RFC 8656 §10.1 and
/// §12.5): messages follow each other with no separator; a STUN message's length is in its
/// header, a ChannelData message is padded to a multiple of 4 bytes. Pure; the caller buffers.
public enum StreamFraming {
    public enum Next: Equatable, Sendable {
        /// Fewer bytes than the next frame needs.
        case incomplete
        /// A STUN message of `length` bytes at the start.
        case stun(length: Int)
        /// ChannelData: `payload` bytes after the 4-byte header; the frame takes `frameLength`.
        case channelData(channel: UInt16, payload: Int, frameLength: Int)
        /// Neither STUN nor ChannelData, or longer than allowed: the stream cannot be resynced.
        case invalid
    }

    public static func next(_ b: UnsafeRawBufferPointer, maxFrame: Int = 4 + 65536) -> Next {
        guard b.count >= 4 else { return b.isEmpty || b[0] & 0xC0 <= 0x40 ? .incomplete : .invalid }
        let first = b[0]
        if first & 0xC0 == 0x40 {
            let payload = Int(b.u16(2))
            let frame = 4 + (payload + 3) & ~3
            guard frame <= maxFrame else { return .invalid }
            return b.count >= frame ? .channelData(channel: b.u16(0), payload: payload, frameLength: frame) : .incomplete
        }
        guard first & 0xC0 == 0 else { return .invalid }
        let length = STUN.headerLength + Int(b.u16(2))
        guard length <= maxFrame, b.u16(2) % 4 == 0 else { return .invalid }
        if b.count >= 8 && b.u32(4) != STUN.magicCookie { return .invalid }
        return b.count >= length ? .stun(length: length) : .incomplete
    }
}

/// What the first bytes of a connection are, for one port serving TLS, STUN and HTTP (RFC 7983
/// style demultiplexing: a TLS record starts with 0x16, STUN with two zero bits and the cookie,
/// HTTP with an ASCII method).
public enum ProtocolSniffer {
    public enum Kind: Equatable, Sendable {
        case tls, stun, http, unknown
    }

    /// nil while too few bytes have arrived to tell.
    public static func sniff(_ b: UnsafeRawBufferPointer) -> Kind? {
        guard let first = b.first else { return nil }
        // 0x16 would pass STUN's two-zero-bits test; a TLS record never has STUN's cookie, and a
        // connection's first message is never STUN with type 0x16xx (no such method).
        if first == 0x16 { return .tls }
        // Upper-case ASCII is 0x41–0x5A, inside ChannelData's 0x40–0x7F; but ChannelData cannot
        // open a connection (it needs an allocation first), so a letter here is an HTTP method.
        if first >= UInt8(ascii: "A") && first <= UInt8(ascii: "Z") { return .http }
        if first & 0xC0 == 0 {
            guard b.count >= 8 else { return nil }
            return b.u32(4) == STUN.magicCookie ? .stun : .unknown
        }
        return .unknown
    }
}
