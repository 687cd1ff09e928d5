import FerryCore
import FerryWire

/// The relay's challenge to a bind (docs/relay-protocol.md, "Bind"): a cookie of
/// `time (u32 seconds) ‖ HMAC-SHA256(key, time ‖ source address ‖ port)[0..<16]` that only the
/// holder of the source address receives. A bind is accepted only with a cookie made for the
/// address it arrives from and at most `RelayProtocol.cookieLifetime` seconds old, so a spoofed
/// source never sees a cookie and a captured one is refused from any other address or later.
/// The relay keeps no state per challenge.
///
/// The key rotates every `rotation` seconds; the previous key still checks cookies made just
/// before a rotation. Times are the relay's clock in whole seconds, handed in; key bytes are
/// handed in too (the relay draws them from OpenSSL), so this is pure.
public struct BindCookies: Sendable {
    public static let length = 20
    public static let rotation: UInt32 = 120

    private var current: (epoch: UInt32, key: [UInt8])
    private var previous: (epoch: UInt32, key: [UInt8])?

    public init(now: UInt32, key: [UInt8]) {
        current = (now / BindCookies.rotation, key)
    }

    /// Whether the key is due to rotate at `now` (call `rotate` with fresh bytes then).
    public func needsRotation(now: UInt32) -> Bool { now / BindCookies.rotation != current.epoch }

    public mutating func rotate(now: UInt32, key: [UInt8]) {
        let epoch = now / BindCookies.rotation
        guard epoch != current.epoch else { return }
        previous = epoch == current.epoch + 1 ? current : nil
        current = (epoch, key)
    }

    /// A cookie for `source` at `now`.
    public func make(for source: SocketAddress, now: UInt32) -> [UInt8] {
        var out = withUnsafeBytes(of: now.bigEndian) { Array($0) }
        out += Array(mac(current.key, time: now, source: source).prefix(16))
        return out
    }

    public enum Refusal: Error, Equatable, Sendable { case malformed, stale, wrongSource }

    /// Checks a cookie echoed by `source` at `now`.
    public func check(_ cookie: UnsafeRawBufferPointer, from source: SocketAddress, now: UInt32) -> Result<Void, Refusal> {
        guard cookie.count == BindCookies.length else { return .failure(.malformed) }
        let time = cookie.u32(0)
        guard time <= now, now - time <= RelayProtocol.cookieLifetime else { return .failure(.stale) }
        let epoch = time / BindCookies.rotation
        let key: [UInt8]
        if epoch == current.epoch { key = current.key } else if let p = previous, p.epoch == epoch { key = p.key } else { return .failure(.stale) }
        let expected = mac(key, time: time, source: source)
        let ok = expected.withUnsafeBytes { Crypto.constantTimeEqual(UnsafeRawBufferPointer(rebasing: $0[0..<16]), UnsafeRawBufferPointer(rebasing: cookie[4..<20])) }
        return ok ? .success(()) : .failure(.wrongSource)
    }

    private func mac(_ key: [UInt8], time: UInt32, source: SocketAddress) -> [UInt8] {
        var input = withUnsafeBytes(of: time.bigEndian) { Array($0) }
        input += source.ip.bytes
        withUnsafeBytes(of: source.port.bigEndian) { input.append(contentsOf: $0) }
        return Crypto.hmacSHA256(key: key, data: input)
    }
}
