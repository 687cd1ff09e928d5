import FerryWire

/// The native relay's control messages (docs/relay-protocol.md): STUN-formatted (RFC 8489
/// header, magic cookie, transaction id, attributes) so they share codecs, fuzzing and tooling
/// with STUN. On the relay's port the first byte tells the two protocols apart with no
/// ambiguity: a request or indication of a method below 0x080 starts with 0x00, a WireGuard
/// message starts with its type, 1–4, followed by three zero bytes.
public enum RelayProtocol {
    /// FERRY-BIND: bind (or refresh, or with LIFETIME 0 unbind) this source address as one side
    /// of a session. Request type 0x00E0; success 0x01E0; error 0x01F0.
    public static let bindMethod: UInt16 = 0x070

    /// Comprehension-required attributes of Ferry's own (0x4000–0x7FFF is IETF review space;
    /// these never leave a native-relay exchange).
    public enum Attribute {
        /// The relay credential signaling handed out (`RelayCredential`), opaque to the client.
        public static let credential: UInt16 = 0x7F10
        /// The partner's WireGuard public key, 32 bytes.
        public static let partner: UInt16 = 0x7F11
        /// The relay's challenge: 4-byte time, 16-byte MAC (`BindCookies`); echoed back as is.
        public static let cookie: UInt16 = 0x7F12
        /// In a success response: 0 waiting for the partner, 1 both sides bound.
        public static let sessionState: UInt16 = 0x7F13
        /// STUN's XOR-MAPPED-ADDRESS (RFC 8489 §14.2): the source the relay saw.
        public static let xorMappedAddress: UInt16 = 0x0020
    }

    /// Error codes of a bind's error response, with RFC 8489's numbers where one fits.
    public enum ErrorCode: Int, Sendable {
        case badRequest = 400
        /// No cookie, or a cookie for another address or too old: the response carries a fresh one.
        case challenge = 401
        /// The credential's MAC is wrong or it expired.
        case forbidden = 403
        /// A limit: sessions per peer or per network, or the relay's total.
        case quota = 486
        /// Binds from everyone above `relay.binds_per_second`.
        case tryLater = 503

        public var reason: String {
            switch self {
            case .badRequest: return "Bad Request"
            case .challenge: return "Challenge"
            case .forbidden: return "Forbidden"
            case .quota: return "Quota Reached"
            case .tryLater: return "Try Later"
            }
        }
    }

    /// How long a challenge cookie may be echoed back, in seconds.
    public static let cookieLifetime: UInt32 = 30

    /// What arrives on a native-relay port, by its first bytes.
    public enum Classified: Equatable, Sendable {
        case control
        case wireGuard(WireGuardMessage.Kind)
        case invalid
    }

    @inlinable
    public static func classify(_ p: UnsafeRawPointer, length n: Int) -> Classified {
        guard n >= 4 else { return .invalid }
        if p.load(as: UInt8.self) == 0 {
            guard n >= STUN.headerLength, UInt32(bigEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)) == STUN.magicCookie else {
                return .invalid
            }
            return .control
        }
        guard let kind = WireGuardMessage.kind(p, length: n) else { return .invalid }
        return .wireGuard(kind)
    }
}
