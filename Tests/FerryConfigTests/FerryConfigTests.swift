import Testing
@testable import FerryConfig
import FerryCore
import FerrySystem
import Foundation

@Suite struct FerryConfigParsing {
    func issues(_ text: String) -> [String] {
        do {
            _ = try FerryConfig.parse(text)
            return []
        } catch {
            return error.issues.map(\.description)
        }
    }

    @Test func emptyFileGivesDefaults() throws {
        let c = try FerryConfig.parse("")
        #expect(c.server.workers == 0)
        #expect(c.engine.batchSize == 64)
        #expect(c.engine.udpReceiveBuffer == 8 << 20)
        #expect(c.admin.address == SocketAddress("127.0.0.1:9090"))
        #expect(c.log.level == .info)
        #expect(c.listeners.isEmpty)
    }

    @Test func fullFileParses() throws {
        let c = try FerryConfig.parse("""
            [server]
            workers = 3
            pin_workers = false
            drain_seconds = 5
            software = "x"
            [log]
            level = "debug"
            format = "json"
            [engine]
            batch_size = 32
            max_datagram = 1500
            udp_receive_buffer = 1048576
            udp_send_buffer = 0
            gro = false
            [admin]
            address = "[::1]:9999"
            max_connections = 8
            request_timeout_seconds = 3
            [[listener]]
            name = "fwd"
            transport = "udp"
            address = "127.0.0.1:7000"
            service = "forward"
            forward_to = "[::1]:7001"
            """)
        #expect(c.server.workers == 3 && !c.server.pinWorkers && c.server.drainSeconds == 5)
        #expect(c.log.level == .debug && c.log.format == .json)
        #expect(c.engine.batchSize == 32 && c.engine.maxDatagram == 1500 && !c.engine.gro)
        #expect(c.admin.address == SocketAddress("[::1]:9999"))
        #expect(c.listeners.count == 1)
        #expect(c.listeners[0].forwardTo == SocketAddress("[::1]:7001"))
        #expect(c.workerCount == 3)
    }

    @Test func adminCanBeDisabled() throws {
        #expect(try FerryConfig.parse("[admin]\naddress = \"\"").admin.address == nil)
    }

    /// Found by the `config` fuzz target: TOMLKit's parser asserted (aborting `ferry config check`,
    /// and ferryd on a SIGHUP) on a control character after `[`. TOML forbids them everywhere.
    @Test func controlCharactersAreASyntaxErrorNotAnAbort() {
        #expect(issues("[\u{02}server]") == ["TOML syntax: control character 0x02 at line 1, column 2"])
        #expect(issues("[turn]\nrealm = \"a\u{7F}\"") == ["TOML syntax: control character 0x7F at line 2, column 11"])
        #expect(issues("# a comment\twith a tab\r\n[turn]\r\nrealm = \"x\"\n").isEmpty, "tab and CRLF are allowed")
    }

    /// Found by the `config` fuzz target: a table name starting with a character that is neither a
    /// bare-key character nor a quote made toml++ assert (abort) instead of reporting an error.
    @Test func aTableNameThatCannotStartAKeyIsASyntaxErrorNotAnAbort() {
        #expect(issues("[server]\nworkers = 1\n[@turn]\nrealm = \"x\"")
                == ["TOML syntax: a table name must start with a letter, a digit, '-', '_' or a quote, at line 3, column 2"])
        #expect(issues("[[ {x} ]]") == ["TOML syntax: a table name must start with a letter, a digit, '-', '_' or a quote, at line 1, column 4"])
    }

    /// The pre-check must not refuse valid TOML that only looks like a bad header: a `[` opening a
    /// line inside a value or inside a string.
    @Test func thePreCheckLeavesValidFilesAlone() throws {
        let valid = """
            [turn]
            realm = "[@not a header"
            static_auth_secrets = [
              "0123456789abcdef0123",
            ]
            [ "policy" ] # quoted, with spaces
            allow = ["127.0.0.0/8"]
            [signal]
            token_secrets = [\"\"\"
            [@also not a header\"\"\", '''
            [{also not'''']
            """
        #expect(TOMLPrecheck.problem(valid) == nil)
        #expect(issues(valid).allSatisfy { !$0.hasPrefix("TOML syntax") }, "toml++ reads it too")
        #expect(TOMLPrecheck.problem("a = [\n  [1, 2],\n  [{x = 1}],\n]\n") == nil, "arrays of arrays spanning lines")
        let root = String(#filePath.dropLast("Tests/FerryConfigTests/FerryConfigTests.swift".count))
        #expect(TOMLPrecheck.problem(try String(contentsOfFile: root + "config/ferry.example.toml", encoding: .utf8)) == nil)
    }

    @Test func unknownKeysAreNamed() {
        #expect(issues("[server]\nworkerz = 2") == ["server.workerz: unknown key"])
        #expect(issues("colour = 1") == ["colour: unknown key"])
        #expect(issues("[[listener]]\nname=\"a\"\naddress=\"127.0.0.1:1\"\nservice=\"forward\"\nforward_to=\"127.0.0.1:2\"\nport = 3")
                == ["listener[0].port: unknown key"])
    }

    @Test func badValuesNameKeyAndAllowedValues() {
        #expect(issues("[server]\nworkers = -1") == ["server.workers: must be from 0 to 1024, got -1"])
        #expect(issues("[server]\nworkers = \"two\"") == ["server.workers: must be an integer from 0 to 1024, got a string"])
        #expect(issues("[engine]\nbatch_size = 0") == ["engine.batch_size: must be from 1 to 1024, got 0"])
        #expect(issues("[engine]\ngro = 1") == ["engine.gro: must be true or false, got an integer"])
        #expect(issues("[log]\nlevel = \"loud\"")
                == ["log.level: must be one of \"trace\", \"debug\", \"info\", \"notice\", \"warning\", \"error\", \"critical\", got \"loud\""])
        #expect(issues("[admin]\naddress = \"localhost\"")
                == ["admin.address: must be an address like \"127.0.0.1:9090\", or \"\" to disable, got \"localhost\""])
        #expect(issues("server = 3") == ["server: must be a table ([server]), got an integer"])
    }

    @Test func listenerRules() {
        #expect(issues("[[listener]]\naddress = \"127.0.0.1:1\"\nservice=\"forward\"\nforward_to=\"127.0.0.1:2\"") == ["listener[0].name: is required"])
        #expect(issues("[[listener]]\nname = \"a\"\nservice=\"forward\"\nforward_to=\"127.0.0.1:2\"") == ["listener[0].address: is required"])
        #expect(issues("[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nservice = \"forward\"")
                == ["listener[0].forward_to: is required when service = \"forward\""])
        #expect(issues("[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nforward_to = \"127.0.0.1:2\"\n[turn]\nrelay_ipv4 = \"127.0.0.1\"")
                == ["listener[0].forward_to: is only allowed when service = \"forward\""])
        #expect(issues("[[listener]]\nname = \"a b\"\naddress = \"127.0.0.1:1\"\nservice=\"forward\"\nforward_to=\"127.0.0.1:2\"")
                == ["listener[0].name: must be 1–255 characters of letters, digits, '-', '_' or '.', got \"a b\""])
        let dup = "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nservice=\"forward\"\nforward_to=\"127.0.0.1:2\"\n"
        #expect(issues(dup + dup) == ["listener[1].name: \"a\" is used by another listener"])
        #expect(issues("[[listener]]\nname = \"a\"\naddress = \"1.2.3.4\"\nservice=\"forward\"\nforward_to=\"127.0.0.1:2\"")
                == ["listener[0].address: must be an address like \"127.0.0.1:3478\" or \"[::1]:3478\", got \"1.2.3.4\""])
    }

    @Test func turnSection() throws {
        let c = try FerryConfig.parse("""
            [turn]
            realm = "example.org"
            relay_ipv4 = "192.0.2.1"
            relay_ipv6 = "2001:db8::1"
            external_ipv4 = "198.51.100.1"
            port_min = 50000
            port_max = 50999
            max_allocations = 500
            static_auth_secrets = ["0123456789abcdef"]
            [[turn.user]]
            name = "alice"
            password = "x"
            [[turn.user]]
            name = "bob"
            key = "0123456789abcdef0123456789abcdef"
            [policy]
            allow = ["10.0.0.0/8"]
            deny = ["10.9.0.0/16", "fd00::1"]
            [[listener]]
            name = "turn-udp"
            address = "0.0.0.0:3478"
            """)
        #expect(c.turn.realm == "example.org")
        #expect(c.turn.relayIPv4 == IPAddress("192.0.2.1") && c.turn.relayIPv6 == IPAddress("2001:db8::1"))
        #expect(c.turn.portMin == 50000 && c.turn.portMax == 50999 && c.turn.maxAllocations == 500)
        #expect(c.turn.users.map(\.name) == ["alice", "bob"])
        #expect(c.policy.allow == ["10.0.0.0/8"] && c.policy.deny.count == 2)
        #expect(c.listeners[0].service == .turn)
    }

    @Test func turnErrors() {
        #expect(issues("[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:3478\"")
                == ["turn.relay_ipv4: is required (or turn.relay_ipv6) when a listener has service = \"turn\": the address relayed sockets bind to"])
        #expect(issues("[turn]\nrelay_ipv4 = \"::1\"") == ["turn.relay_ipv4: must be an IPv4 address, got \"::1\""])
        #expect(issues("[turn]\nport_min = 60000\nport_max = 50000") == ["turn.port_max: must not be below turn.port_min (60000)"])
        #expect(issues("[turn]\nstatic_auth_secrets = [\"short\"]") == ["turn.static_auth_secrets[0]: must be at least 16 bytes"])
        #expect(issues("[[turn.user]]\nname = \"a\"") == ["turn.user[0].password: give exactly one of password or key"])
        #expect(issues("[[turn.user]]\nname = \"a\"\nkey = \"xyz\"") == ["turn.user[0].key: must be 32 lower-case hex digits: MD5(name:realm:password)"])
        #expect(issues("[[turn.user]]\nname = \"a\"\npassword = \"p\"\n[[turn.user]]\nname = \"a\"\npassword = \"q\"")
                == ["turn.user[1].name: \"a\" is defined twice"])
        #expect(issues("[policy]\nallow = [\"10.0.0.0/33\", \"nope\"]") == [
            "policy.allow[0]: must be an address block like \"10.0.0.0/8\" or \"fd00::/8\", got \"10.0.0.0/33\"",
            "policy.allow[1]: must be an address block like \"10.0.0.0/8\" or \"fd00::/8\", got \"nope\""])
        #expect(issues("[turn]\nbogus = 1") == ["turn.bogus: unknown key"])
    }

    @Test func developmentDefaultServesTURNOnLoopback() {
        let c = FerryConfig.development
        #expect(c.listeners.map(\.transport) == [.udp, .tcp, .tls, .udp])
        #expect(c.listeners.map(\.service) == [.turn, .turn, .turn, .relay])
        #expect(c.listeners.allSatisfy { $0.address.ip == IPAddress("127.0.0.1") })
        #expect(c.signal.selfRelayURLs.contains("wgrelay:127.0.0.1:3479"), "signaling hands out the native relay too")
        #expect(c.tls.selfSigned, "the TLS listener gets a certificate generated at start")
        #expect(c.turn.relayIPv4 == IPAddress("127.0.0.1"))
        #expect(c.admin.address?.ip == IPAddress("127.0.0.1"))
        #expect(c.policy.allow == ["127.0.0.0/8"], "only loopback clients reach it, so loopback peers are allowed")
        #expect((try? FerryConfig.parse(""))?.policy.allow.isEmpty == true, "a config file starts from deny")
    }

    @Test func tlsAndStreamSections() throws {
        let c = try FerryConfig.parse("""
            [tls]
            min_version = "1.3"
            handshake_timeout_seconds = 5
            [[tls.certificate]]
            certificate = "/etc/ferry/a.pem"
            key = "/etc/ferry/a.key"
            [[tls.certificate]]
            certificate = "/etc/ferry/b.pem"
            key = "/etc/ferry/b.key"
            [stream]
            idle_timeout_seconds = 120
            write_buffer_bytes = 65536
            [turn]
            relay_ipv4 = "127.0.0.1"
            [[listener]]
            name = "turn-tls"
            transport = "tls"
            address = "0.0.0.0:443"
            """)
        #expect(c.tls.certificates.map(\.certificate) == ["/etc/ferry/a.pem", "/etc/ferry/b.pem"])
        #expect(c.tls.minVersion == "1.3" && c.tls.handshakeTimeoutSeconds == 5)
        #expect(c.stream.idleTimeoutSeconds == 120 && c.stream.writeBufferBytes == 65536)
        #expect(c.listeners[0].transport == .tls)
    }

    @Test func tlsErrors() {
        #expect(issues("[turn]\nrelay_ipv4 = \"127.0.0.1\"\n[[listener]]\nname = \"t\"\ntransport = \"tls\"\naddress = \"127.0.0.1:5349\"")
                == ["tls.certificate: is required when a listener has transport = \"tls\" (or set tls.self_signed = true for testing)"])
        #expect(issues("[tls]\nmin_version = \"1.1\"") == ["tls.min_version: must be \"1.2\" or \"1.3\", got \"1.1\""])
        #expect(issues("[[tls.certificate]]\ncertificate = \"/a.pem\"") == ["tls.certificate[0].key: is required: path of the PEM private key"])
        #expect(issues("[[listener]]\nname = \"f\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:1\"\nservice = \"forward\"\nforward_to = \"127.0.0.1:2\"")
                == ["listener[0].transport: service \"forward\" needs transport \"udp\""])
        #expect(issues("[stream]\nwrite_buffer_bytes = 10") == ["stream.write_buffer_bytes: must be from 4096 to 67108864, got 10"])
    }

    @Test func signalSection() throws {
        let c = try FerryConfig.parse("""
            [turn]
            relay_ipv4 = "127.0.0.1"
            [tls]
            self_signed = true
            [signal]
            enabled = true
            token_secrets = ["0123456789abcdef0"]
            max_payload = 1024
            [[signal.relay]]
            region = "eu"
            urls = ["turns:eu.example.org:443?transport=tcp"]
            secret = "x"
            [[listener]]
            name = "tls"
            transport = "tls"
            address = "127.0.0.1:5349"
            """)
        #expect(c.signal.enabled && c.signal.maxPayload == 1024 && c.signal.relays.map(\.region) == ["eu"])
    }

    @Test func signalErrors() {
        #expect(issues("[signal]\nenabled = true\ntoken_secrets = [\"0123456789abcdef0\"]")
                == ["signal.enabled: signaling needs a listener with transport = \"tls\" (or \"tcp\")"])
        #expect(issues("[signal]\njwks_url = \"http://issuer/jwks\"\njwt_issuer = \"i\"\njwt_audience = \"a\"")
                == ["signal.jwks_url: must be an https:// URL, got \"http://issuer/jwks\""])
        #expect(issues("[signal]\njwks_file = \"/j.json\"") == ["signal.jwt_issuer: jwt_issuer and jwt_audience are required with jwks_file or jwks_url"])
        #expect(issues("[signal]\nserver_key = \"abc\"")
                == ["signal.server_key: must be 64 lower-case hex digits (an X25519 private key), or \"\" to keep one in server.state_directory"])
        #expect(issues("[[signal.relay]]\nregion = \"eu\"\nurls = [\"http://x\"]\nsecret = \"s\"")
                == ["signal.relay[0].urls[0]: must start with turn:, turns:, wgrelay: or wgrelays:, got \"http://x\""])
    }

    @Test func everyProblemIsReportedAtOnce() {
        let found = issues("[server]\nworkers = -1\nbogus = 1\n[engine]\nbatch_size = 0")
        #expect(found.count == 3)
    }

    @Test func syntaxErrorsSayWhere() {
        let found = issues("[server\nworkers = 1")
        #expect(found.count == 1)
        #expect(found[0].hasPrefix("TOML syntax:"))
        #expect(found[0].contains("line 1"))
    }

    @Test func environmentOverrides() throws {
        var c = FerryConfig()
        try c.applyEnvironment(["FERRY_WORKERS": "4", "FERRY_LOG_LEVEL": "ERROR", "FERRY_ADMIN_ADDRESS": "", "FERRY_LOG_FORMAT": "json"])
        #expect(c.server.workers == 4 && c.log.level == .error && c.admin.address == nil && c.log.format == .json)
        #expect(throws: ConfigErrors.self) { try c.applyEnvironment(["FERRY_WORKERS": "many"]) }
        do {
            try c.applyEnvironment(["FERRY_ADMIN_ADDRESS": "nowhere"])
            Issue.record("expected an error")
        } catch {
            #expect(error.issues.map(\.key) == ["FERRY_ADMIN_ADDRESS"])
        }
    }

    @Test func exampleConfigIsValid() throws {
        // The shipped example must always parse: it documents every key.
        let path = #filePath.split(separator: "/").dropLast(3).joined(separator: "/")
        let text = try #require(readFile("/" + path + "/config/ferry.example.toml"))
        _ = try FerryConfig.parse(text)
    }
}
