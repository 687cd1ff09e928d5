import Testing
import FerryCore
import FerryTURN

@Suite struct PeerPolicyChecks {
    let policy = PeerPolicy()

    @Test(arguments: [
        "127.0.0.1", "127.1.2.3", "0.0.0.0", "10.0.0.1", "172.16.5.4", "172.31.255.255", "192.168.1.1",
        "100.64.0.1", "100.100.100.200", "169.254.169.254", "224.0.0.1", "239.255.255.250", "255.255.255.255",
        "::", "::1", "fc00::1", "fd00:ec2::254", "fe80::1", "fec0::1", "ff02::1",
        // The same addresses in IPv6 clothing.
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1", "::a9fe:a9fe",
        "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::100.100.100.200", "2002:7f00:1::1", "2002:a9fe:a9fe::",
        "2002:c0a8:101::5", "2001:0:4136:e378:8000:63bf:80ff:fffe", "64:ff9b:1::a00:1",
    ])
    func deniedByDefault(_ text: String) {
        let ip = IPAddress(text)!
        #expect(!policy.permits(ip), "\(text) must be denied")
    }

    @Test(arguments: ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "192.0.2.1"])
    func publicAddressesAllowed(_ text: String) {
        #expect(policy.permits(IPAddress(text)!), "\(text) must be allowed")
    }

    @Test func teredoEmbedsInvertedClient() {
        // Client 127.0.0.1 inverted is 80ff:fffe.
        #expect(PeerPolicy.embeddedIPv4(IPAddress("2001:0:4136:e378:8000:63bf:80ff:fffe")!) == IPAddress("127.0.0.1"))
    }

    @Test func allowOverridesDefaultsAndDenyOverridesAll() {
        let vpc = PeerPolicy(allow: [CIDR("10.0.0.0/8")!], deny: [CIDR("10.9.0.0/16")!, CIDR("8.8.8.8")!])
        #expect(vpc.permits(IPAddress("10.1.2.3")!))
        #expect(vpc.permits(IPAddress("::ffff:10.1.2.3")!))
        #expect(!vpc.permits(IPAddress("10.9.0.1")!))
        #expect(!vpc.permits(IPAddress("::ffff:10.9.0.1")!))
        #expect(!vpc.permits(IPAddress("8.8.8.8")!))
        #expect(!vpc.permits(IPAddress("127.0.0.1")!))
        #expect(vpc.check(IPAddress("8.8.8.8")!) == .deniedExplicitly(CIDR("8.8.8.8/32")!))
    }

    @Test func ownRelayAddressesArePeersOnLiveAllocationPortsOnly() {
        let relay = IPAddress("10.20.0.5")!
        let live = RelayPortSet.allocate()
        defer { live.deallocate() }
        live.insert(.ipv4, port: 50000)
        live.insert(.ipv4, port: 61234)
        let p = PeerPolicy(ownRelayAddresses: [relay, .ipv4Any])
        #expect(p.ownRelayAddresses == [relay], "an unspecified address is never 'own'")
        #expect(!p.permits(relay), "the policy alone still denies the block")
        #expect(p.permitsPermission(relay))
        #expect(p.permits(peer: SocketAddress(ip: relay, port: 50000), live: live))
        #expect(p.permits(peer: SocketAddress(ip: relay, port: 61234), live: live))
        // A port in the relay range but held by no allocation: another process's socket, or freed.
        #expect(!p.permits(peer: SocketAddress(ip: relay, port: 50001), live: live))
        #expect(!p.permits(peer: SocketAddress(ip: relay, port: 3478), live: live), "not the TURN listener")
        #expect(!p.permits(peer: SocketAddress(ip: relay, port: 53), live: live), "not the resolver")
        #expect(p.refusesSend(to: SocketAddress(ip: relay, port: 3478), live: live))
        #expect(p.refusesSend(to: SocketAddress(ip: relay, port: 50001), live: live))
        #expect(!p.refusesSend(to: SocketAddress(ip: relay, port: 50000), live: live))
        // Freed: unreachable at once.
        live.remove(.ipv4, port: 50000)
        #expect(!p.permits(peer: SocketAddress(ip: relay, port: 50000), live: live))
        #expect(p.refusesSend(to: SocketAddress(ip: relay, port: 50000), live: live))
        // Another family's live port is not this family's.
        live.insert(.ipv6, port: 50002)
        #expect(!p.permits(peer: SocketAddress(ip: relay, port: 50002), live: live))
        // Nothing else on that network, nor the address in another encoding.
        #expect(!p.permitsPermission(IPAddress("10.20.0.6")!))
        #expect(!p.permitsPermission(IPAddress("::ffff:10.20.0.5")!))
        #expect(!p.permits(peer: SocketAddress(ip: IPAddress("10.20.0.6")!, port: 61234), live: live))
        #expect(!p.permits(peer: SocketAddress(ip: IPAddress("::ffff:10.20.0.5")!, port: 61234), live: live))
        // An explicit deny still wins; an allow covering the address opens every port.
        let denied = PeerPolicy(deny: [CIDR("10.20.0.0/16")!], ownRelayAddresses: [relay])
        #expect(!denied.permitsPermission(relay))
        #expect(!denied.permits(peer: SocketAddress(ip: relay, port: 61234), live: live))
        let allowed = PeerPolicy(allow: [CIDR("10.20.0.0/16")!], ownRelayAddresses: [relay])
        #expect(!allowed.limitsToLivePorts(relay))
        #expect(allowed.permits(peer: SocketAddress(ip: relay, port: 3478), live: live))
        #expect(!allowed.refusesSend(to: SocketAddress(ip: relay, port: 3478), live: live))
    }

    @Test func aPublicRelayAddressIsLimitedToLivePortsToo() {
        // A relay on a public address: the policy allows the block, but the host's own services
        // on that address are no more a peer than on a private one.
        let publicRelay = IPAddress("8.8.4.4")!
        let live = RelayPortSet.allocate()
        defer { live.deallocate() }
        live.insert(.ipv4, port: 50000)
        let p = PeerPolicy(ownRelayAddresses: [publicRelay])
        #expect(p.permits(publicRelay), "public: the policy alone allows it")
        #expect(p.limitsToLivePorts(publicRelay))
        #expect(p.permits(peer: SocketAddress(ip: publicRelay, port: 50000), live: live))
        #expect(!p.permits(peer: SocketAddress(ip: publicRelay, port: 53), live: live))
        #expect(p.refusesSend(to: SocketAddress(ip: publicRelay, port: 123), live: live))
        // Other public addresses are unaffected.
        #expect(p.permits(peer: SocketAddress(ip: IPAddress("8.8.8.8")!, port: 53), live: live))
        #expect(!p.refusesSend(to: SocketAddress(ip: IPAddress("8.8.8.8")!, port: 53), live: live))
    }

    @Test func relayPortSetKeepsFamiliesAndEveryPortApart() {
        let live = RelayPortSet.allocate()
        defer { live.deallocate() }
        for port: UInt16 in [0, 1, 63, 64, 65535] {
            #expect(!live.contains(.ipv4, port: port))
            live.insert(.ipv4, port: port)
            #expect(live.contains(.ipv4, port: port))
            #expect(!live.contains(.ipv6, port: port))
            #expect(!live.contains(.ipv4, port: 1000), "no other bit set")
        }
        live.remove(.ipv4, port: 64)
        #expect(!live.contains(.ipv4, port: 64))
        #expect(live.contains(.ipv4, port: 63) && live.contains(.ipv4, port: 65535))
    }

    @Test func cidrParsing() {
        #expect(CIDR("10.1.2.3/8")?.description == "10.0.0.0/8")
        #expect(CIDR("2001:db8::1/32")?.description == "2001:db8::/32")
        #expect(CIDR("10.0.0.0/33") == nil)
        #expect(CIDR("nonsense") == nil)
        #expect(CIDR("0.0.0.0/0")!.contains(IPAddress("1.2.3.4")!))
        #expect(!CIDR("0.0.0.0/0")!.contains(IPAddress("::1")!))
        #expect(CIDR("::/0")!.contains(IPAddress("2001::1")!))
    }
}
