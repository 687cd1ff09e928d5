import Testing
import FerryCore
import FerryConfig
import FerryPreflight

/// The placeholder and documentation-value rules `ferry config check` and ferryd share.
@Suite struct PreflightRules {
    static func config(_ body: (inout FerryConfig) -> Void) -> FerryConfig {
        var c = FerryConfig()
        body(&c)
        return c
    }

    @Test func placeholderSecretsAreNamedByKey() {
        let c = PreflightRules.config { c in
            c.turn.staticAuthSecrets = ["replace-with-the-secret-your-management-server-uses", "0123456789abcdef0123"]
            c.signal.tokenSecrets = ["CHANGE-ME-please-0123456789"]
            c.admin.token = "a-perfectly-random-token-0123456789"
        }
        let r = Preflight.placeholders(c)
        #expect(r.secrets.map(\.key) == ["turn.static_auth_secrets", "signal.token_secrets"])
        #expect(r.examples.isEmpty)
    }

    @Test func documentationAddressesAndExampleNames() {
        for text in ["192.0.2.1", "198.51.100.254", "203.0.113.10", "2001:db8::1"] {
            #expect(Preflight.isDocumentation(IPAddress(text)!), "\(text)")
        }
        for text in ["192.0.3.1", "8.8.8.8", "2001:db9::1", "10.0.0.1"] {
            #expect(!Preflight.isDocumentation(IPAddress(text)!), "\(text)")
        }
        #expect(Preflight.isExampleName("relay.example.org"))
        #expect(Preflight.isExampleName("EXAMPLE.com."))
        #expect(!Preflight.isExampleName("notexample.org"))
        #expect(!Preflight.isExampleName("relay.example.org.evil"))
        let c = PreflightRules.config { c in
            c.turn.realm = "relay.example.net"
            c.turn.externalIPv4 = IPAddress("203.0.113.7")
            c.signal.selfRelayURLs = ["turns:relay.example.com:443?transport=tcp", "turn:[2001:db8::5]:3478"]
        }
        #expect(Preflight.placeholders(c).examples.map(\.key) == ["turn.external_ipv4", "turn.realm", "signal.self_relay_urls"])
    }

    @Test func aRelayAddressOfThisHostBindsAndADocumentationOneDoesNot() {
        #expect(Preflight.relayAddressProblem(IPAddress("127.0.0.1")!) == nil)
        let problem = Preflight.relayAddressProblem(IPAddress("192.0.2.77")!)
        #expect(problem?.contains("cannot be bound on this host") == true)
        #expect(problem?.contains("turn.external_ipv4") == true)
    }

    @Test func theNATSClientsFilesMustBeReadableAndItsSecretsReal() {
        let c = PreflightRules.config { c in
            c.signal.enabled = true
            c.signal.nats.servers = ["tls://nats.internal:4222"]
            c.signal.nats.caFile = "/nonexistent/nats-ca.pem"
            c.signal.nats.credentialsFile = "/nonexistent/ferry.creds"
            c.signal.nats.password = "change-me"
        }
        let r = Preflight.host(c)
        #expect(r.issues.map(\.key) == ["signal.nats.ca_file", "signal.nats.credentials_file"])
        #expect(r.issues.first?.message.contains("No such file") == true)
        #expect(Preflight.placeholders(c).secrets.map(\.key) == ["signal.nats.password"])
        // Without servers (NATS not used), nothing of it is checked.
        var off = c
        off.signal.nats.servers = []
        #expect(Preflight.host(off).issues.isEmpty)
    }
}
