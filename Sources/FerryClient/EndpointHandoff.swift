import FerryCore

/// Whether WireGuard talks to a peer itself (its endpoint is the peer's own address, or a native
/// relay) or through the agent's local endpoint, and when to take a handed-off path back: when
/// WireGuard sends on it and hears nothing back for 5 s. Pure: the caller reads WireGuard's
/// transfer counters and sets its endpoints, and keeps the time (monotonic nanoseconds).
public struct EndpointHandoff: Sendable {
    public static let silence: UInt64 = 5_000_000_000

    /// Where WireGuard was pointed (nil: the agent's local endpoint).
    public private(set) var handedOff: SocketAddress?
    /// The path was taken back for silence: not handed off again until the route changes.
    public private(set) var refused = false
    /// WireGuard's counters for the peer when last seen to work (or when first pointed).
    private var baseline: (rx: UInt64, tx: UInt64, at: UInt64)?

    public enum Change: Equatable, Sendable {
        /// Point WireGuard at this endpoint.
        case point(SocketAddress)
        /// Point WireGuard back at the agent's local endpoint.
        case takeBack
        case none
    }

    public init() {}

    /// The endpoint WireGuard itself can use for a peer on the current route, or nil (the
    /// agent's local endpoint): a bound native relay; on the shared port, the direct pair ICE
    /// checked from WireGuard's own port, through whatever NAT is between; without it, a direct
    /// pair to the peer's host address, at its WireGuard port (the agent's ICE port is not
    /// WireGuard's). Relayed through TURN: the agent carries it.
    public static func endpoint(direct: Bool, remote: SocketAddress, remoteKind: ICECandidate.Kind, remoteWireGuardPort: UInt16?,
                                sharedPort: Bool, nativeRelay: SocketAddress?) -> SocketAddress? {
        if let nativeRelay { return nativeRelay }
        guard direct else { return nil }
        if sharedPort { return remote }
        guard remoteKind == .host, let port = remoteWireGuardPort else { return nil }
        return SocketAddress(ip: remote.ip, port: port)
    }

    /// The endpoint the current path would have WireGuard use (nil: the agent's).
    public mutating func want(_ endpoint: SocketAddress?) -> Change {
        let wanted = refused ? nil : endpoint
        guard wanted != handedOff else { return .none }
        handedOff = wanted
        baseline = nil
        return wanted.map { .point($0) } ?? .takeBack
    }

    /// ICE selected another route: a refusal made for the old one no longer holds.
    public mutating func routeChanged() { refused = false }

    /// WireGuard's byte counters for the peer (`wg show … dump`): the first reading after a
    /// handoff is the baseline; anything received since proves the path; bytes sent and nothing
    /// received for `silence` takes it back.
    public mutating func observe(rx: UInt64, tx: UInt64, now: UInt64) -> Change {
        guard handedOff != nil else { return .none }
        guard let b = baseline else {
            baseline = (rx, tx, now)
            return .none
        }
        if rx > b.rx {
            baseline = (rx, tx, now)
        } else if tx > b.tx && now > b.at + EndpointHandoff.silence {
            refused = true
            handedOff = nil
            baseline = nil
            return .takeBack
        }
        return .none
    }

    /// Whether WireGuard's endpoint as read (`current`) must be pointed back at the agent's
    /// `local` one: WireGuard roams to the source of the peer's packets, and may roam past the
    /// agent onto a path the agent did not hand it.
    public func roamed(_ current: SocketAddress?, local: SocketAddress) -> Bool {
        guard handedOff == nil, let current else { return false }
        return current != local
    }
}
