import FerryCore
import FerryWire
import FerryRelay

/// A peer's side of FERRY-BIND (docs/relay-protocol.md): the request, the relay's challenge, and
/// the signed answer. Pure: the caller sends and receives (from WireGuard's port, in `ferry
/// tunnel`; from a socket of its own, in `ferry probe` and `ferry bench`) and keeps the time.
public struct RelayBinder: Sendable {
    public let token: [UInt8]
    public let key: [UInt8]
    public let partner: [UInt8]
    /// The last challenge's cookie, echoed until a new one arrives.
    public private(set) var cookie: [UInt8]?

    public init(token: [UInt8], key: [UInt8], partner: [UInt8]) {
        self.token = token
        self.key = key
        self.partner = partner
    }

    /// A bind (or with `lifetime` 0 an unbind) with transaction id `tid`.
    public func request(_ tid: TransactionID, lifetime: UInt32? = nil) -> [UInt8] {
        STUNWriter.build(method: RelayProtocol.bindMethod, class: .request, transactionID: tid) { w in
            token.withUnsafeBytes { w.append(RelayProtocol.Attribute.credential, bytes: $0) }
            partner.withUnsafeBytes { w.append(RelayProtocol.Attribute.partner, bytes: $0) }
            cookie?.withUnsafeBytes { w.append(RelayProtocol.Attribute.cookie, bytes: $0) }
            if let lifetime { w.append(STUN.Attribute.lifetime, uint32: lifetime) }
            key.withUnsafeBytes { w.appendMessageIntegritySHA256(key: $0) }
            w.appendFingerprint()
        }
    }

    public enum Answer: Equatable, Sendable {
        /// Ask again (the cookie is kept): the first answer to every bind from a new address.
        case challenged
        /// Bound: `active` once the partner has bound too.
        case bound(active: Bool, mapped: SocketAddress, lifetime: UInt32)
        case unbound
        case refused(code: Int, reason: String)
    }

    /// The relay's answer to `tid`, or nil for anything else (another transaction, a success
    /// not signed with this credential's key: not from the relay).
    public mutating func answer(_ bytes: UnsafeRawBufferPointer, tid: TransactionID) -> Answer? {
        guard case .success(let m) = STUNMessage.parse(bytes), m.method == RelayProtocol.bindMethod, m.transactionID == tid else { return nil }
        switch m.messageClass {
        case .error:
            guard let (code, reason) = m.errorCode() else { return nil }
            if code == RelayProtocol.ErrorCode.challenge.rawValue, let c = m.attribute(RelayProtocol.Attribute.cookie) {
                cookie = Array(c)
                return .challenged
            }
            return .refused(code: code, reason: reason)
        case .success:
            guard key.withUnsafeBytes({ m.verifyIntegritySHA256(key: $0) }),
                  let mapped = m.xorAddress(RelayProtocol.Attribute.xorMappedAddress) else { return nil }
            let lifetime = m.uint32(STUN.Attribute.lifetime) ?? 0
            if lifetime == 0 { return .unbound }
            return .bound(active: m.uint32(RelayProtocol.Attribute.sessionState) == 1, mapped: mapped, lifetime: lifetime)
        default:
            return nil
        }
    }
}
