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

    @Test func ownRelayAddressesArePeersOnTheRelayPortsOnly() {
        let relay = IPAddress("10.20.0.5")!
        let p = PeerPolicy(ownRelayAddresses: [relay, .ipv4Any], ownRelayPorts: 50000...50100)
        #expect(p.ownRelayAddresses == [relay], "an unspecified address is never 'own'")
        #expect(!p.permits(relay), "the policy alone still denies the block")
        #expect(p.permitsPermission(relay))
        #expect(p.permits(peer: SocketAddress(ip: relay, port: 50000)))
        #expect(p.permits(peer: SocketAddress(ip: relay, port: 50100)))
        #expect(!p.permits(peer: SocketAddress(ip: relay, port: 3478)), "not the TURN listener")
        #expect(!p.permits(peer: SocketAddress(ip: relay, port: 9100)), "not the admin port")
        #expect(p.refusesSend(to: SocketAddress(ip: relay, port: 3478)))
        #expect(!p.refusesSend(to: SocketAddress(ip: relay, port: 50001)))
        // Nothing else on that network, nor the address in another encoding.
        #expect(!p.permitsPermission(IPAddress("10.20.0.6")!))
        #expect(!p.permitsPermission(IPAddress("::ffff:10.20.0.5")!))
        #expect(!p.permits(peer: SocketAddress(ip: IPAddress("10.20.0.6")!, port: 50000)))
        // An explicit deny still wins; an allow lifts the port limit as before.
        let denied = PeerPolicy(deny: [CIDR("10.20.0.0/16")!], ownRelayAddresses: [relay], ownRelayPorts: 50000...50100)
        #expect(!denied.permitsPermission(relay))
        #expect(!denied.permits(peer: SocketAddress(ip: relay, port: 50000)))
        let allowed = PeerPolicy(allow: [CIDR("10.20.0.0/16")!], ownRelayAddresses: [relay], ownRelayPorts: 50000...50100)
        #expect(allowed.permits(peer: SocketAddress(ip: relay, port: 3478)))
        #expect(!allowed.refusesSend(to: SocketAddress(ip: relay, port: 3478)))
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
