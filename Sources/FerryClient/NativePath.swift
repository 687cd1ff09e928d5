/// How one link of `ferry tunnel` uses the native relay (docs/cli.md): not at all, over UDP from
/// WireGuard's port, over the relay's stream side, or not yet (whether UDP reaches the relay is
/// being probed: a session already bound stays meanwhile). Pure: the tunnel carries out the
/// change (Tunnel+Native).
public enum NativePath: Equatable, Sendable {
    case none, wait, udp, stream

    /// Both agents must offer the same relay, and the route must go through a relay at all: a
    /// direct path needs none. A link that gave up on it (refused, or WireGuard heard nothing
    /// back) stays off until signaling comes back.
    public static func choose(relayedRoute: Bool, refused: Bool, remoteOffer: String?, localOffer: String?,
                              udpReaches: Bool?, streamSide: Bool) -> NativePath {
        guard relayedRoute, !refused, let remote = remoteOffer, remote == localOffer else { return .none }
        switch udpReaches {
        case nil: return .wait
        case true?: return .udp
        case false?: return streamSide ? .stream : .none
        }
    }
}
