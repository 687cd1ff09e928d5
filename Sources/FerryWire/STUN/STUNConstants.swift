/// STUN (RFC 8489) and TURN (RFC 8656) numbers.
public enum STUN {
    /// RFC 8489 §5: the fixed value that tells STUN from other protocols on the same port.
    public static let magicCookie: UInt32 = 0x2112_A442
    public static let headerLength = 20

    public enum Method {
        public static let binding: UInt16 = 0x001
        public static let allocate: UInt16 = 0x003
        public static let refresh: UInt16 = 0x004
        public static let send: UInt16 = 0x006
        public static let data: UInt16 = 0x007
        public static let createPermission: UInt16 = 0x008
        public static let channelBind: UInt16 = 0x009

        public static func name(_ m: UInt16) -> String {
            switch m {
            case binding: return "binding"
            case allocate: return "allocate"
            case refresh: return "refresh"
            case send: return "send"
            case data: return "data"
            case createPermission: return "create_permission"
            case channelBind: return "channel_bind"
            default: return "other"
            }
        }
    }

    public enum Attribute {
        public static let mappedAddress: UInt16 = 0x0001
        public static let username: UInt16 = 0x0006
        public static let messageIntegrity: UInt16 = 0x0008
        public static let errorCode: UInt16 = 0x0009
        public static let unknownAttributes: UInt16 = 0x000A
        public static let channelNumber: UInt16 = 0x000C
        public static let lifetime: UInt16 = 0x000D
        public static let xorPeerAddress: UInt16 = 0x0012
        public static let data: UInt16 = 0x0013
        public static let realm: UInt16 = 0x0014
        public static let nonce: UInt16 = 0x0015
        public static let xorRelayedAddress: UInt16 = 0x0016
        public static let requestedAddressFamily: UInt16 = 0x0017
        public static let evenPort: UInt16 = 0x0018
        public static let requestedTransport: UInt16 = 0x0019
        public static let dontFragment: UInt16 = 0x001A
        public static let messageIntegritySHA256: UInt16 = 0x001C
        public static let passwordAlgorithm: UInt16 = 0x001D
        public static let userHash: UInt16 = 0x001E
        public static let xorMappedAddress: UInt16 = 0x0020
        public static let reservationToken: UInt16 = 0x0022
        public static let priority: UInt16 = 0x0024
        public static let useCandidate: UInt16 = 0x0025
        public static let additionalAddressFamily: UInt16 = 0x8000
        public static let addressErrorCode: UInt16 = 0x8001
        public static let passwordAlgorithms: UInt16 = 0x8002
        public static let software: UInt16 = 0x8022
        public static let alternateServer: UInt16 = 0x8023
        public static let fingerprint: UInt16 = 0x8028
        public static let iceControlled: UInt16 = 0x8029
        public static let iceControlling: UInt16 = 0x802A

        /// Comprehension-required attributes (0x0000–0x7FFF) this server understands; any other
        /// in a request is answered 420 with UNKNOWN-ATTRIBUTES (RFC 8489 §7.3.1).
        public static func isUnderstood(_ type: UInt16) -> Bool {
            switch type {
            case mappedAddress, username, messageIntegrity, errorCode, unknownAttributes, channelNumber, lifetime,
                 xorPeerAddress, data, realm, nonce, xorRelayedAddress, requestedAddressFamily, evenPort,
                 requestedTransport, dontFragment, messageIntegritySHA256, passwordAlgorithm, userHash,
                 xorMappedAddress, reservationToken, priority, useCandidate:
                return true
            default:
                return false
            }
        }
    }

    /// Error codes used by the server (RFC 8489 §14.8, RFC 8656 §18).
    public enum ErrorCode {
        public static let badRequest = 400
        public static let unauthorized = 401
        public static let forbidden = 403
        public static let unknownAttribute = 420
        public static let allocationMismatch = 437
        public static let staleNonce = 438
        public static let addressFamilyNotSupported = 440
        public static let wrongCredentials = 441
        public static let unsupportedTransportProtocol = 442
        public static let peerAddressFamilyMismatch = 443
        public static let allocationQuotaReached = 486
        public static let serverError = 500
        public static let insufficientCapacity = 508

        public static func reason(_ code: Int) -> String {
            switch code {
            case 400: return "Bad Request"
            case 401: return "Unauthorized"
            case 403: return "Forbidden"
            case 420: return "Unknown Attribute"
            case 437: return "Allocation Mismatch"
            case 438: return "Stale Nonce"
            case 440: return "Address Family not Supported"
            case 441: return "Wrong Credentials"
            case 442: return "Unsupported Transport Protocol"
            case 443: return "Peer Address Family Mismatch"
            case 486: return "Allocation Quota Reached"
            case 500: return "Server Error"
            case 508: return "Insufficient Capacity"
            default: return "Error"
            }
        }
    }
}

/// The class of a STUN message: the two class bits of the type field.
public enum STUNClass: UInt8, Sendable {
    case request = 0
    case indication = 1
    case success = 2
    case error = 3
}

/// RFC 8489 §5: the 14-bit type interleaves the method's 12 bits with the class's 2 bits.
public enum STUNType {
    @inlinable
    public static func encode(method: UInt16, class c: STUNClass) -> UInt16 {
        let cls = UInt16(c.rawValue)
        return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2)
            | ((cls & 0x1) << 4) | ((cls & 0x2) << 7)
    }

    @inlinable
    public static func decode(_ type: UInt16) -> (method: UInt16, class: STUNClass) {
        let method = (type & 0x000F) | ((type & 0x00E0) >> 1) | ((type & 0x3E00) >> 2)
        let cls = ((type & 0x0010) >> 4) | ((type & 0x0100) >> 7)
        return (method, STUNClass(rawValue: UInt8(cls))!)
    }
}

/// The 96-bit transaction id.
public struct TransactionID: Hashable, Sendable {
    public var high: UInt32
    public var low: UInt64

    public init(high: UInt32, low: UInt64) {
        self.high = high
        self.low = low
    }

    public static func random() -> TransactionID {
        var g = SystemRandomNumberGenerator()
        return TransactionID(high: g.next(), low: g.next())
    }
}
