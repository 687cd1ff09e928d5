import Testing
import FerryWire
@testable import FerryClient

/// TURN's stream framing as the tunnel reads it: frames split anywhere by the reads, handed on
/// whole and in place, and unmoved until the caller compacts.
@Suite struct StreamFrameReading {
    static func channelData(_ channel: UInt16, _ payload: [UInt8]) -> [UInt8] {
        [UInt8(channel >> 8), UInt8(channel & 0xFF), UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)] + payload
            + [UInt8](repeating: 0, count: (4 - payload.count % 4) % 4)
    }

    static let stun = STUNBinding.request()
    static let stream: [UInt8] = channelData(0x4000, Array(1...5)) + stun + channelData(0x4001, []) + channelData(0x4000, Array(repeating: 7, count: 1388))

    /// Feeds `bytes` in reads of `piece` bytes; returns what was handed on, as it was handed on.
    static func read(_ bytes: [UInt8], piece: Int, reader: StreamFrameReader = StreamFrameReader()) -> ([String], StreamFrameReader.Outcome) {
        var seen: [String] = []
        var at = 0
        var outcome = StreamFrameReader.Outcome.more
        while at < bytes.count {
            let n = min(piece, bytes.count - at, reader.freeSpace.count)
            bytes[at..<(at + n)].withUnsafeBytes { reader.freeSpace.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
            reader.didRead(n)
            at += n
            outcome = reader.frames { frame in
                switch frame {
                case .stun(let m): seen.append("stun \(m.count) \(Array(m) == stun)")
                case .channelData(let c, let p): seen.append("cd \(String(c, radix: 16)) \(Array(p).prefix(5))")
                }
            }
            guard outcome == .more else { return (seen, outcome) }
            reader.compact()
        }
        return (seen, outcome)
    }

    @Test(arguments: [1, 2, 3, 7, 20, 1000, 100_000])
    func frames_split_anywhere_come_out_whole(piece: Int) {
        let (seen, outcome) = StreamFrameReading.read(StreamFrameReading.stream, piece: piece)
        #expect(outcome == .more)
        #expect(seen == ["cd 4000 [1, 2, 3, 4, 5]", "stun 28 true", "cd 4001 []", "cd 4000 [7, 7, 7, 7, 7]"])
    }

    @Test func a_frame_stays_in_place_until_compact() {
        let r = StreamFrameReader()
        let bytes = StreamFrameReading.channelData(0x4000, [9, 9, 9]) + [0x40, 0x00]  // a whole frame and a partial one
        bytes.withUnsafeBytes { r.freeSpace.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        r.didRead(bytes.count)
        var held: UnsafeMutableRawBufferPointer?
        #expect(r.frames { if case .channelData(_, let p) = $0 { held = p } } == .more)
        #expect(Array(held!) == [9, 9, 9])
        // Handing on again finds nothing new; the frame is still there.
        #expect(r.frames { _ in Issue.record("handed on twice") } == .more)
        #expect(Array(held!) == [9, 9, 9])
        r.compact()
        #expect(r.freeSpace.count == r.capacity - 2, "only the partial frame is left")
    }

    @Test func unframeable_bytes_and_oversized_frames_are_reported() {
        #expect(StreamFrameReading.read([0xFF, 1, 2, 3], piece: 4).1 == .invalid)
        #expect(StreamFrameReading.read(StreamFrameReading.channelData(0x4000, Array(repeating: 1, count: 100)), piece: 8,
                                        reader: StreamFrameReader(capacity: 64)).1 == .tooLarge)
    }
}
