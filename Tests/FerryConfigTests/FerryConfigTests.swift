import Testing
import FerryConfig
import FerrySystem

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

    @Test func unknownKeysAreNamed() {
        #expect(issues("[server]\nworkerz = 2") == ["server.workerz: unknown key"])
        #expect(issues("colour = 1") == ["colour: unknown key"])
        #expect(issues("[[listener]]\nname=\"a\"\naddress=\"127.0.0.1:1\"\nforward_to=\"127.0.0.1:2\"\nport = 3")
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
        #expect(issues("[[listener]]\naddress = \"127.0.0.1:1\"\nforward_to=\"127.0.0.1:2\"") == ["listener[0].name: is required"])
        #expect(issues("[[listener]]\nname = \"a\"\nforward_to=\"127.0.0.1:2\"") == ["listener[0].address: is required"])
        #expect(issues("[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"")
                == ["listener[0].forward_to: is required when service = \"forward\""])
        #expect(issues("[[listener]]\nname = \"a b\"\naddress = \"127.0.0.1:1\"\nforward_to=\"127.0.0.1:2\"")
                == ["listener[0].name: must be 1–255 characters of letters, digits, '-', '_' or '.', got \"a b\""])
        let dup = "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nforward_to=\"127.0.0.1:2\"\n"
        #expect(issues(dup + dup) == ["listener[1].name: \"a\" is used by another listener"])
        #expect(issues("[[listener]]\nname = \"a\"\naddress = \"1.2.3.4\"\nforward_to=\"127.0.0.1:2\"")
                == ["listener[0].address: must be an address like \"127.0.0.1:3478\" or \"[::1]:3478\", got \"1.2.3.4\""])
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
