import FerryWire

/// TURN's framing on a stream (RFC 8656 §12.5: STUN messages and ChannelData padded to 4), as
/// a client reads it in pieces of any size: bytes go into a buffer of stable address, whole
/// frames come out in place (no copy), and the partial frame at the end moves to the front only
/// when the caller says the frames it handed on are gone (`compact`), so a frame queued for a
/// send is never overwritten before the send. Used by `ferry tunnel` for its TURN stream and its
/// native-relay streams. Pure: the caller does the reads.
public final class StreamFrameReader {
    public enum Frame {
        case stun(UnsafeMutableRawBufferPointer)
        case channelData(channel: UInt16, payload: UnsafeMutableRawBufferPointer)
    }

    public enum Outcome: Equatable, Sendable {
        /// Every whole frame was handed on; the rest waits for more bytes.
        case more
        /// Bytes no framing explains: the stream cannot be resynchronised.
        case invalid
        /// A frame longer than the buffer.
        case tooLarge
    }

    private let buffer: UnsafeMutableRawPointer
    public let capacity: Int
    private var fill = 0
    private var used = 0

    /// The largest frame is a 64 KiB ChannelData and its header and padding; twice that lets a
    /// read of any size find room after a partial frame.
    public init(capacity: Int = 2 * (4 + 65536 + 4)) {
        self.capacity = capacity
        buffer = .allocate(byteCount: capacity, alignment: 8)
    }

    deinit { buffer.deallocate() }

    /// Where the next read goes: the free space after what is buffered.
    public var freeSpace: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: buffer + fill, count: capacity - fill) }

    /// `n` bytes were read into `freeSpace`.
    public func didRead(_ n: Int) { fill += n }

    /// Hands on each whole frame after those already handed on. The frames point into the
    /// buffer and stay valid until `compact`.
    public func frames(_ body: (Frame) -> Void) -> Outcome {
        while true {
            let rest = UnsafeMutableRawBufferPointer(start: buffer + used, count: fill - used)
            switch StreamFraming.next(UnsafeRawBufferPointer(rest)) {
            case .stun(let length):
                used += length
                body(.stun(UnsafeMutableRawBufferPointer(rebasing: rest[0..<length])))
            case .channelData(let channel, let payload, let frameLength):
                used += frameLength
                body(.channelData(channel: channel, payload: UnsafeMutableRawBufferPointer(rebasing: rest[4..<(4 + payload)])))
            case .invalid:
                return .invalid
            case .incomplete:
                return fill == capacity && used == 0 ? .tooLarge : .more
            }
        }
    }

    /// The frames handed on are no longer needed: the partial one moves to the front.
    public func compact() {
        guard used > 0 else { return }
        buffer.copyMemory(from: buffer + used, byteCount: fill - used)
        fill -= used
        used = 0
    }

    /// Forgets everything (a new connection).
    public func reset() {
        fill = 0
        used = 0
    }
}
