import FerryCore
import FerryWire

/// Data indications written in place, in the headroom a peer datagram was read into: the
/// payload never moves. Transaction ids are "FRRY" and a counter (an indication needs an id
/// unique among the sender's, RFC 8489 §6, not a random one). Owned by one worker's TURN service.
struct DataIndicationWriter {
    /// Where a Data indication's header starts before the payload: 20 (header) + 24 (IPv6
    /// XOR-PEER-ADDRESS) + 4 (DATA header) = 48; IPv4 uses 36 of it.
    static let headroom = 48
    private var transactionCounter: UInt64 = 0

    /// Writes a Data indication (RFC 8656 §10.3) ending right before `data`: header,
    /// XOR-PEER-ADDRESS, DATA header; pads the payload. Returns where the message starts.
    mutating func write(before data: UnsafeMutableRawPointer, length: Int, peer: SocketAddress) -> UnsafeMutableRawPointer {
        let addressLength = XORAddress.encodedLength(peer)
        let start = data - (STUN.headerLength + 4 + addressLength + 4)
        transactionCounter &+= 1
        let tid = TransactionID(high: 0x4652_5259, low: transactionCounter)  // "FRRY", then a counter
        let padded = (length + 3) & ~3
        start.storeBytes(of: STUNType.encode(method: STUN.Method.data, class: .indication).bigEndian, as: UInt16.self)
        start.storeBytes(of: UInt16(4 + addressLength + 4 + padded).bigEndian, toByteOffset: 2, as: UInt16.self)
        start.storeBytes(of: STUN.magicCookie.bigEndian, toByteOffset: 4, as: UInt32.self)
        start.storeBytes(of: tid.high.bigEndian, toByteOffset: 8, as: UInt32.self)
        start.storeBytes(of: tid.low.bigEndian, toByteOffset: 12, as: UInt64.self)
        var p = start + STUN.headerLength
        p.storeBytes(of: STUN.Attribute.xorPeerAddress.bigEndian, as: UInt16.self)
        p.storeBytes(of: UInt16(addressLength).bigEndian, toByteOffset: 2, as: UInt16.self)
        XORAddress.encode(peer, transactionID: tid, into: p + 4)
        p += 4 + addressLength
        p.storeBytes(of: STUN.Attribute.data.bigEndian, as: UInt16.self)
        p.storeBytes(of: UInt16(length).bigEndian, toByteOffset: 2, as: UInt16.self)
        for i in length..<padded { (data + i).storeBytes(of: UInt8(0), as: UInt8.self) }
        return start
    }
}
