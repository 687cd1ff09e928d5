import FerryClient
import FerryCore
import FerrySystem
import FerryTLS
import FerryWire

/// One client connection to a server over UDP, TCP or TLS, with deadlines: the I/O shell under
/// FerryClient's state machines for `ferry probe` (blocking with timeouts; the tunnel's data
/// plane runs on the event loop instead). Frames STUN and ChannelData on streams.
public final class ClientConnection {
    public let server: SocketAddress
    public let transport: ServerURL.Transport
    let fd: FileDescriptor
    public let tls: TLSClient?
    private var input: [UInt8] = []
    private var buffer = [UInt8](repeating: 0, count: 65536)

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    /// Connects (TCP and TLS: handshake included) to `server`; `host` is the name for SNI and
    /// certificate checks.
    /// `socketBuffers`: SO_RCVBUF and SO_SNDBUF for a UDP socket (0: the kernel's default).
    public init(to server: SocketAddress, transport: ServerURL.Transport, host: String, caFile: String?, alpn: [String] = [],
                timeoutMilliseconds: Int32, socketBuffers: Int = 0) throws(Failure) {
        self.server = server
        self.transport = transport
        do {
            switch transport {
            case .udp:
                fd = try Sockets.udp(bind: SocketAddress(ip: server.ip.isIPv4 ? .ipv4Any : .ipv6Any, port: 0),
                                     options: .init(reusePort: false, receiveBuffer: socketBuffers, sendBuffer: socketBuffers))
                tls = nil
            case .tcp:
                fd = try Sockets.connectTCP(server, timeoutMilliseconds: timeoutMilliseconds)
                tls = nil
            case .tls:
                fd = try Sockets.connectTCP(server, timeoutMilliseconds: timeoutMilliseconds)
                do {
                    tls = try TLSClient(fd: fd.raw, host: host, caFile: caFile, alpn: alpn, timeoutMilliseconds: timeoutMilliseconds)
                } catch {
                    _ = fd.close()
                    throw Failure("TLS handshake with \(server): \(error)")
                }
            }
        } catch let e as SystemError {
            throw Failure("\(e)")
        } catch let e as Failure {
            throw e
        } catch {
            throw Failure("\(error)")
        }
    }

    deinit { _ = fd.close() }

    public var localAddress: SocketAddress? { try? Sockets.localAddress(fd.raw) }

    /// The socket, for registering a stream connection on an event loop.
    public var fdRaw: Int32 { fd.raw }

    /// A non-blocking read of a stream into `buffer` (the tunnel's relay path, without
    /// allocating): bytes read, 0 when the server closed, nil when nothing is there.
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        guard buffer.count > 0 else { return nil }
        if let tls {
            do {
                return try tls.read(into: buffer, timeoutMilliseconds: 0)  // nil: nothing yet
            } catch {
                return 0  // a TLS error ends the stream like a close
            }
        }
        switch try? Sockets.read(fd.raw, into: buffer) {
        case .done(let n)?: return n
        case .wouldBlock?: return nil
        case nil: return 0
        }
    }

    /// Writes a whole frame to the stream, waiting briefly for room (a stream is the fallback
    /// path; a full socket buffer for a second means the path is gone, and the frame is dropped).
    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if let tls { return (try? tls.write(bytes, timeoutMilliseconds: 1000)) != nil }
        var done = 0
        while done < bytes.count {
            switch try? Sockets.write(fd.raw, from: UnsafeRawBufferPointer(rebasing: bytes[done...])) {
            case .done(let n)?: done += n
            case .wouldBlock?: if !Sockets.wait(fd.raw, forWriting: true, timeoutMilliseconds: 1000) { return false }
            case nil: return false
            }
        }
        return true
    }

    public func send(_ bytes: [UInt8], timeoutMilliseconds: Int32 = 3000) throws(Failure) {
        do {
            switch transport {
            case .udp:
                _ = try bytes.withUnsafeBytes { b throws(SystemError) in try Sockets.sendDatagram(fd.raw, b, to: server) }
            case .tcp:
                var done = 0
                while done < bytes.count {
                    let r = try bytes.withUnsafeBytes { b throws(SystemError) in
                        try Sockets.write(fd.raw, from: UnsafeRawBufferPointer(rebasing: b[done...]))
                    }
                    if let n = r.value { done += n } else if !Sockets.wait(fd.raw, forWriting: true, timeoutMilliseconds: timeoutMilliseconds) {
                        throw Failure("send to \(server): timed out")
                    }
                }
            case .tls:
                try tls!.write(bytes, timeoutMilliseconds: timeoutMilliseconds)
            }
        } catch let e as SystemError {
            throw Failure("send to \(server): \(e)")
        } catch let e as TLSError {
            throw Failure("send to \(server): \(e)")
        } catch let e as Failure {
            throw e
        } catch {
            throw Failure("\(error)")
        }
    }

    /// Raw bytes as they come (the signaling WebSocket); empty when the server closed; nil on
    /// timeout.
    public func receiveBytes(timeoutMilliseconds: Int32) throws(Failure) -> [UInt8]? {
        do {
            if let tls { return try tls.read(timeoutMilliseconds: timeoutMilliseconds) }
            guard Sockets.wait(fd.raw, timeoutMilliseconds: timeoutMilliseconds) else { return nil }
            let r = try buffer.withUnsafeMutableBytes { b throws(SystemError) in try Sockets.read(fd.raw, into: b) }
            guard let n = r.value else { return nil }
            return Array(buffer[0..<n])
        } catch {
            throw Failure("receive from \(server): \(error)")
        }
    }

    /// The next STUN message or ChannelData frame (datagram, or framed on a stream), from the
    /// server only; nil when the deadline (monotonic ns) passes.
    public func receiveMessage(until deadline: UInt64) throws(Failure) -> [UInt8]? {
        while true {
            if transport != .udp, let frame = nextFrame() { return frame }
            let now = monotonicNanos()
            guard now < deadline else { return nil }
            let wait = Int32(min(60_000, max(1, (deadline - now) / 1_000_000)))
            if transport == .udp {
                guard Sockets.wait(fd.raw, timeoutMilliseconds: wait) else { continue }
                let r: IOResult<(Int, SocketAddress?)>
                do {
                    r = try buffer.withUnsafeMutableBytes { b throws(SystemError) in try Sockets.receiveDatagram(fd.raw, into: b) }
                } catch {
                    throw Failure("receive from \(server): \(error)")
                }
                guard let (n, from) = r.value, from == server else { continue }
                return Array(buffer[0..<n])
            }
            guard let bytes = try receiveBytes(timeoutMilliseconds: wait) else { continue }
            if bytes.isEmpty { throw Failure("\(server) closed the connection") }
            input += bytes
        }
    }

    private func nextFrame() -> [UInt8]? {
        switch input.withUnsafeBytes({ StreamFraming.next($0) }) {
        case .stun(let length):
            defer { input.removeFirst(length) }
            return Array(input[0..<length])
        case .channelData(_, let payload, let frameLength):
            defer { input.removeFirst(frameLength) }
            return Array(input[0..<(4 + payload)])
        case .incomplete, .invalid:
            return nil
        }
    }
}

extension ClientConnection {
    /// Sends a TURN request and drives `client` until it reports an event: the 401 and 438
    /// rounds, and retransmissions over UDP. The event (a `.failed` one included), or nil when
    /// nothing came before the timeout. `ferry probe` and `ferry bench` share it.
    public func exchange(_ client: inout TURNClient, _ first: [UInt8], timeoutMilliseconds: Int32) throws(Failure) -> TURNClient.Event? {
        let deadline = monotonicNanos() + UInt64(timeoutMilliseconds) * 1_000_000
        try send(first)
        while true {
            let now = monotonicNanos()
            guard now < deadline else { return nil }
            let (timeouts, again) = client.tick(now: now)
            for bytes in again { try send(bytes) }
            if let e = timeouts.first { return e }
            guard let m = try receiveMessage(until: min(deadline, client.nextDeadline)) else { continue }
            var result: (events: [TURNClient.Event], send: [[UInt8]]) = ([], [])
            m.withUnsafeBytes { b in
                if case .success(let msg) = STUNMessage.parse(b, exact: true) { result = client.receive(msg, now: monotonicNanos()) }
            }
            for bytes in result.send { try send(bytes) }
            if let e = result.events.first { return e }
        }
    }
}
