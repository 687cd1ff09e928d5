#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import CFerryLinux

/// Preallocated receive side of batched UDP I/O: `capacity` slots of `slotSize` bytes, their
/// iovecs, message headers, source addresses and (with GRO) control buffers, all allocated
/// once at start and reused for every `recvmmsg`. Owned by one worker; not thread-safe.
public final class UDPReceiveBatch {
    public let capacity: Int
    public let slotSize: Int
    /// Bytes kept free before each datagram, so a header can be written in front of it in
    /// place (TURN prepends ChannelData or Data-indication headers without copying).
    public let headroom: Int
    public let buffers: UnsafeMutableRawPointer
    @usableFromInline let iovecs: UnsafeMutablePointer<iovec>
    @usableFromInline let headers: UnsafeMutablePointer<ferry_mmsghdr>
    @usableFromInline let names: UnsafeMutablePointer<sockaddr_storage>
    @usableFromInline let controls: UnsafeMutableRawPointer?
    @usableFromInline let controlSize: Int

    /// `slotSize` should be 65535 with GRO (a coalesced train), else the largest datagram kept.
    /// `tailroom` bytes after the datagram stay free too (padding a STUN DATA attribute).
    public init(capacity: Int, slotSize: Int, gro: Bool = false, headroom: Int = 0, tailroom: Int = 0) {
        precondition(capacity > 0 && slotSize > headroom + tailroom)
        self.capacity = capacity
        self.slotSize = slotSize
        self.headroom = headroom
        buffers = UnsafeMutableRawPointer.allocate(byteCount: capacity * slotSize, alignment: 64)
        iovecs = .allocate(capacity: capacity)
        headers = .allocate(capacity: capacity)
        names = .allocate(capacity: capacity)
        controlSize = gro ? ferry_cmsg_space_gro() : 0
        controls = gro ? UnsafeMutableRawPointer.allocate(byteCount: capacity * controlSize, alignment: 8) : nil
        for i in 0..<capacity {
            iovecs[i] = iovec(iov_base: buffers + i * slotSize + headroom, iov_len: slotSize - headroom - tailroom)
            headers[i] = ferry_mmsghdr()
            headers[i].msg_hdr.msg_name = UnsafeMutableRawPointer(names + i)
            headers[i].msg_hdr.msg_iov = iovecs + i
            headers[i].msg_hdr.msg_iovlen = 1
            if let controls { headers[i].msg_hdr.msg_control = controls + i * controlSize }
        }
    }

    deinit {
        buffers.deallocate()
        iovecs.deallocate()
        headers.deallocate()
        names.deallocate()
        controls?.deallocate()
    }

    /// One `recvmmsg` into all slots. Returns how many datagrams arrived.
    @inlinable
    public func receive(from fd: Int32) throws(SystemError) -> IOResult<Int> {
        resetForReceive()
        return try syscall("recvmmsg") { Int(ferry_recvmmsg(fd, headers, UInt32(capacity), Int32(MSG_DONTWAIT))) }
    }

    @usableFromInline
    func resetForReceive() {
        let h = headers, size = socklen_t(MemoryLayout<sockaddr_storage>.size), cs = controlSize
        for i in 0..<capacity {
            h[i].msg_hdr.msg_namelen = size
            h[i].msg_hdr.msg_controllen = cs
        }
    }

    @inlinable public func data(_ i: Int) -> UnsafeMutableRawPointer { buffers + i * slotSize + headroom }
    @inlinable public func length(_ i: Int) -> Int { Int(headers[i].msg_len) }
    /// Where datagram `i` came from, in kernel form (for `SocketAddress(storage:)`).
    @inlinable public func sourceStorage(_ i: Int) -> UnsafeRawPointer { UnsafeRawPointer(names + i) }
    @inlinable public func source(_ i: Int) -> SocketAddress? { SocketAddress(storage: UnsafeRawPointer(names + i)) }
    /// The GRO segment size of slot `i` (0 when the slot holds a single datagram).
    @inlinable public func groSegment(_ i: Int) -> Int {
        controlSize == 0 ? 0 : Int(ferry_cmsg_gro_size(&headers[i].msg_hdr))
    }
    /// True when datagram `i` did not fit its slot and was cut.
    @inlinable public func truncated(_ i: Int) -> Bool {
        headers[i].msg_hdr.msg_flags & Int32(MSG_TRUNC) != 0
    }

    /// Fills slot `i` as `recvmmsg` would have (the fake datagram I/O of tests and fuzzing):
    /// the bytes, cut to the slot with the truncation flag set, and their source.
    public func store(_ i: Int, _ bytes: [UInt8], from source: SocketAddress) {
        let room = iovecs[i].iov_len
        let n = min(bytes.count, room)
        bytes.withUnsafeBytes { data(i).copyMemory(from: $0.baseAddress!, byteCount: n) }
        headers[i].msg_len = UInt32(n)
        headers[i].msg_hdr.msg_flags = bytes.count > room ? Int32(MSG_TRUNC) : 0
        headers[i].msg_hdr.msg_namelen = source.write(to: UnsafeMutableRawPointer(names + i))
        headers[i].msg_hdr.msg_controllen = 0
    }
}

/// Preallocated send side: a queue of up to `capacity` datagrams for one socket, flushed with
/// `sendmmsg`. Entries point at caller-owned bytes (zero copy); the caller keeps them alive
/// until `flush`. Optionally each entry carries a `UDP_SEGMENT` size (GSO).
public final class UDPSendQueue {
    public let capacity: Int
    /// The number of queued datagrams, kept behind a pointer rather than in a stored `var`:
    /// a class's stored var costs a dynamic exclusivity check on every write, per packet here.
    @usableFromInline let queued: UnsafeMutablePointer<Int>
    public var count: Int { queued.pointee }
    @usableFromInline let iovecs: UnsafeMutablePointer<iovec>
    @usableFromInline let headers: UnsafeMutablePointer<ferry_mmsghdr>
    @usableFromInline let names: UnsafeMutablePointer<sockaddr_storage>
    @usableFromInline let controls: UnsafeMutableRawPointer
    @usableFromInline let controlSize: Int
    /// Destinations are written as IPv6 (mapped for IPv4) when the socket is IPv6.
    public let ipv6Socket: Bool

    public init(capacity: Int, ipv6Socket: Bool = false) {
        self.capacity = capacity
        self.ipv6Socket = ipv6Socket
        iovecs = .allocate(capacity: capacity)
        headers = .allocate(capacity: capacity)
        names = .allocate(capacity: capacity)
        controlSize = ferry_cmsg_space_segment()
        controls = .allocate(byteCount: capacity * controlSize, alignment: 8)
        queued = .allocate(capacity: 1)
        queued.initialize(to: 0)
        for i in 0..<capacity {
            headers[i] = ferry_mmsghdr()
            headers[i].msg_hdr.msg_name = UnsafeMutableRawPointer(names + i)
            headers[i].msg_hdr.msg_iov = iovecs + i
            headers[i].msg_hdr.msg_iovlen = 1
            headers[i].msg_hdr.msg_control = controls + i * controlSize
        }
    }

    deinit {
        iovecs.deallocate()
        headers.deallocate()
        names.deallocate()
        controls.deallocate()
        queued.deallocate()
    }

    public var isFull: Bool { queued.pointee == capacity }

    /// Queues one datagram (or, with `segment > 0`, a GSO train of `segment`-byte datagrams).
    @inlinable
    public func append(_ bytes: UnsafeRawPointer, _ length: Int, to destination: SocketAddress, segment: UInt16 = 0) {
        let i = queued.pointee
        precondition(i < capacity, "UDPSendQueue overfilled: flush when isFull")
        iovecs[i] = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes), iov_len: length)
        headers[i].msg_hdr.msg_namelen = destination.write(to: UnsafeMutableRawPointer(names + i), asIPv6: ipv6Socket)
        setSegment(i, segment)
        queued.pointee = i + 1
    }

    /// Queues one datagram to a destination already in kernel form (copied as is).
    @inlinable
    public func append(_ bytes: UnsafeRawPointer, _ length: Int, toStorage storage: UnsafeRawPointer, storageLength: socklen_t, segment: UInt16 = 0) {
        let i = queued.pointee
        precondition(i < capacity, "UDPSendQueue overfilled: flush when isFull")
        iovecs[i] = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes), iov_len: length)
        UnsafeMutableRawPointer(names + i).copyMemory(from: storage, byteCount: Int(storageLength))
        headers[i].msg_hdr.msg_namelen = storageLength
        setSegment(i, segment)
        queued.pointee = i + 1
    }

    @usableFromInline
    func setSegment(_ i: Int, _ segment: UInt16) {
        if segment == 0 {
            headers[i].msg_hdr.msg_controllen = 0
        } else {
            ferry_cmsg_set_segment(&headers[i].msg_hdr, segment)
        }
    }

    /// The outcome of a flush: datagrams the kernel took, and datagrams dropped because the
    /// socket buffer was full (`wouldBlock`) or the send failed (an error such as
    /// `ECONNREFUSED` from an earlier ICMP, or `EMSGSIZE`).
    public struct FlushResult {
        public var sent = 0
        public var bufferFull = 0
        public var failed = 0
        public var lastError: SystemError?

        public init(sent: Int = 0, bufferFull: Int = 0, failed: Int = 0) {
            self.sent = sent
            self.bufferFull = bufferFull
            self.failed = failed
        }
    }

    /// Sends everything queued, retrying partial sends; what cannot be sent is dropped and
    /// reported (UDP: a full buffer is loss, not a reason to buffer without bound).
    @discardableResult
    public func flush(_ fd: Int32) -> FlushResult {
        var result = FlushResult()
        let count = queued.pointee
        var start = 0
        while start < count {
            let remaining = count - start
            let headers = self.headers
            do {
                switch try syscall("sendmmsg", { Int(ferry_sendmmsg(fd, headers + start, UInt32(remaining), Int32(MSG_DONTWAIT))) }) {
                case .done(let n):
                    result.sent += n
                    start += max(n, 1)
                    if n == 0 { result.failed += 1 }
                case .wouldBlock:
                    result.bufferFull += remaining
                    start = count
                }
            } catch {
                // The first message failed; skip it and go on with the rest.
                result.failed += 1
                result.lastError = error
                start += 1
            }
        }
        queued.pointee = 0
        return result
    }

    /// Forgets queued entries without sending.
    public func reset() { queued.pointee = 0 }

    /// A queued datagram, copied out: bytes, destination and GSO segment size (0: none).
    public struct Entry: Equatable, Sendable {
        public let bytes: [UInt8]
        public let destination: SocketAddress?
        public let segment: Int

        public init(bytes: [UInt8], destination: SocketAddress?, segment: Int) {
            self.bytes = bytes
            self.destination = destination
            self.segment = segment
        }
    }

    /// What is queued, copied out (the fake datagram I/O of tests: what a flush would send).
    public var entries: [Entry] {
        (0..<queued.pointee).map { i in
            let bytes = Array(UnsafeRawBufferPointer(start: iovecs[i].iov_base, count: iovecs[i].iov_len))
            let segment = headers[i].msg_hdr.msg_controllen == 0 ? 0 : Int(ferry_cmsg_get_segment(&headers[i].msg_hdr))
            return Entry(bytes: bytes, destination: SocketAddress(storage: UnsafeRawPointer(names + i)), segment: segment)
        }
    }
}
