import Testing
@testable import FerryClient

/// When a tunnel link uses the native relay, and how.
@Suite struct NativePaths {
    static let relay = "wgrelay:198.51.100.1:3479"

    @Test(arguments: [
        // relayed, refused, remote offer, local offer, UDP reaches, stream side → path
        (true, false, relay, relay, true, false, NativePath.udp),
        (true, false, relay, relay, true, true, .udp),
        (true, false, relay, relay, false, true, .stream),
        (true, false, relay, relay, false, false, .none),
        (true, false, relay, relay, nil, true, .wait),
        (false, false, relay, relay, true, true, .none),                     // a direct path needs no relay
        (true, true, relay, relay, true, true, .none),                       // gave up on it
        (true, false, nil, relay, true, true, .none),                        // the peer offered none
        (true, false, relay, nil, true, true, .none),                        // we offer none (proxy mode)
        (true, false, "wgrelay:198.51.100.2:3479", relay, true, true, .none), // not the same relay
    ] as [(Bool, Bool, String?, String?, Bool?, Bool, NativePath)])
    func choose(_ relayed: Bool, _ refused: Bool, _ remote: String?, _ local: String?, _ udp: Bool?, _ stream: Bool, _ expected: NativePath) {
        #expect(NativePath.choose(relayedRoute: relayed, refused: refused, remoteOffer: remote, localOffer: local,
                                  udpReaches: udp, streamSide: stream) == expected)
    }
}
