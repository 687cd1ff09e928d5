/// ChannelData framing (RFC 8656 §12.4): channel number, length, data; over streams padded to
/// a multiple of 4. RFC 8656 narrowed channel numbers to 0x4000–0x4FFF; RFC 5766 §11 allowed
/// "0x4000 through 0x7FFF", and coturn's own clients still pick uniformly from that range, so
/// servers accept it unless configured strictly (`turn.strict_channel_numbers`).
public enum ChannelData {
    public static let minChannel: UInt16 = 0x4000
    public static let maxChannel: UInt16 = 0x4FFF
    public static let maxLegacyChannel: UInt16 = 0x7FFF
    public static let headerLength = 4

    /// First two bits 01: ChannelData, by RFC 7983's demultiplexing.
    @inlinable public static func isChannelData(firstByte b: UInt8) -> Bool { b & 0xC0 == 0x40 }

    @inlinable public static func isValidChannel(_ n: UInt16) -> Bool { n >= minChannel && n <= maxChannel }

    /// Channel and payload length of a ChannelData message, or nil if the length overruns.
    @inlinable
    public static func parse(_ b: UnsafeRawBufferPointer) -> (channel: UInt16, length: Int)? {
        guard b.count >= headerLength else { return nil }
        let channel = b.u16(0)
        let length = Int(b.u16(2))
        guard headerLength + length <= b.count else { return nil }
        return (channel, length)
    }

    /// Writes the 4-byte header at `p`.
    @inlinable
    public static func writeHeader(channel: UInt16, length: Int, at p: UnsafeMutableRawPointer) {
        p.storeBytes(of: channel.bigEndian, as: UInt16.self)
        p.storeBytes(of: UInt16(length).bigEndian, toByteOffset: 2, as: UInt16.self)
    }
}
