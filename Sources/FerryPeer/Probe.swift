import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import FerryTLS
import FerryWire

/// `ferry probe`: an operator's black-box check of a deployment (docs/cli.md). For each URL:
/// STUN binding (mapped address, round trip), TURN allocate and an echo through the relay back to
/// itself over ChannelData, the TLS certificate (chain, names, days to expiry), and a signaling
/// round trip (auth, welcome, relay handout). Relays are ranked by round trip.
public struct ProbeOptions: Sendable {
    public var credentials: TURNClient.Credentials?
    public var restSecret: String?
    public var token: String?
    public var tokenSecret: String?
    public var network = "probe"
    public var privateKey: [UInt8]?
    public var caFile: String?
    public var insecure = false
    public var timeoutMilliseconds: Int32 = 3000
    public init() {}
}

public struct ProbeStep: Sendable {
    public let name: String
    public let ok: Bool
    public let detail: String
    /// Round trip in microseconds, where the step measures one.
    public let rtt: Double?
    public let data: [(String, JSONValue)]
}

public struct ProbeTarget: Sendable {
    public let url: String
    public let host: String
    public var steps: [ProbeStep] = []
    public var ok: Bool { steps.allSatisfy(\.ok) }
    /// The best round trip any step measured (the ranking key).
    public var rtt: Double? { steps.compactMap(\.rtt).min() }
}

public struct ProbeReport: Sendable {
    public let targets: [ProbeTarget]
    public var ok: Bool { targets.allSatisfy(\.ok) }

    /// Hosts by their best round trip (hosts where nothing answered last).
    public var ranking: [(host: String, rtt: Double?)] {
        var best: [String: Double?] = [:], order: [String] = []
        for t in targets {
            if best[t.host] == nil { order.append(t.host); best[t.host] = .some(nil) }
            if let r = t.rtt { best[t.host] = min(best[t.host]!.flatMap { $0 } ?? .infinity, r) }
        }
        return order.map { ($0, best[$0]!) }.sorted { ($0.rtt ?? .infinity) < ($1.rtt ?? .infinity) }
    }

    public var json: JSONValue {
        .object([
            ("ok", .bool(ok)),
            ("targets", .array(targets.map { t in
                .object([("url", .string(t.url)), ("host", .string(t.host)), ("ok", .bool(t.ok)),
                         ("steps", .array(t.steps.map { s in
                             .object([("name", .string(s.name)), ("ok", .bool(s.ok)), ("detail", .string(s.detail))]
                                     + (s.rtt.map { [("rtt_us", JSONValue.number(($0 * 10).rounded() / 10))] } ?? []) + s.data)
                         }))])
            })),
            ("ranking", .array(ranking.map { r in
                .object([("host", .string(r.host))] + (r.rtt.map { [("rtt_us", JSONValue.number(($0 * 10).rounded() / 10))] } ?? []))
            })),
        ])
    }

    public var human: String {
        var out = ""
        for t in targets {
            out += "\(t.url)\n"
            for s in t.steps {
                let rtt = s.rtt.map { "  rtt \(Self.ms($0))" } ?? ""
                out += "  \(s.ok ? "ok  " : "FAIL")  \(s.name.padding(16))\(s.detail)\(rtt)\n"
            }
        }
        let ranked = ranking
        if ranked.count > 1 || !ranked.isEmpty {
            out += "relays by round trip:"
            for (i, r) in ranked.enumerated() { out += " \(i + 1). \(r.host) (\(r.rtt.map(Self.ms) ?? "no answer"))" }
            out += "\n"
        }
        let failed = targets.flatMap { t in t.steps.filter { !$0.ok }.map { "\(t.url): \($0.name)" } }
        out += failed.isEmpty ? "all checks passed\n" : "FAILED: \(failed.joined(separator: "; "))\n"
        return out
    }

    static func ms(_ us: Double) -> String {
        let v = (us / 10).rounded() / 100
        return "\(v) ms"
    }
}

extension String {
    func padding(_ n: Int) -> String { count >= n ? self + " " : self + String(repeating: " ", count: n - count) }
}

public struct Prober {
    public let options: ProbeOptions
    /// TURN credentials handed out by `welcome`, by relay host (used where none were given).
    private var handedOut: [String: TURNClient.Credentials] = [:]
    /// Native-relay credentials handed out by `welcome` to two keys of the probe's, by host
    /// (Probe+Native.swift: the echo needs both ends of a session).
    var nativeHandedOut: [String: [NativeCredential]] = [:]
    let key: [UInt8]

    public init(options: ProbeOptions) {
        self.options = options
        key = options.privateKey ?? X25519.keyPair().privateKey
    }

    /// Probes every URL: signaling first (its welcome may hand out TURN credentials), then the
    /// rest in the order given.
    public mutating func run(_ urls: [ServerURL]) -> ProbeReport {
        var targets: [ProbeTarget] = []
        for u in urls where u.kind == .signal { targets.append(probeSignal(u)) }
        for u in urls where u.kind != .signal { targets.append(u.kind == .native ? probeNative(u) : probeRelay(u)) }
        let position = Dictionary(urls.enumerated().map { ($1.text, $0) }, uniquingKeysWith: { a, _ in a })
        return ProbeReport(targets: targets.sorted { position[$0.url, default: 0] < position[$1.url, default: 0] })
    }

    /// `rtt` in microseconds.
    func step(_ name: String, ok: Bool, _ detail: String, rtt: UInt64? = nil, _ data: [(String, JSONValue)] = []) -> ProbeStep {
        ProbeStep(name: name, ok: ok, detail: detail, rtt: rtt.map { Double($0) }, data: data)
    }

    func connect(_ u: ServerURL, alpn: [String], into t: inout ProbeTarget) -> ClientConnection? {
        let address: SocketAddress
        do {
            address = try Resolver.resolve(u.host, port: u.port)[0]
        } catch {
            t.steps.append(step("resolve", ok: false, "\(error)"))
            return nil
        }
        do {
            let c = try ClientConnection(to: address, transport: u.transport, host: u.host, caFile: options.caFile, alpn: alpn,
                                         timeoutMilliseconds: options.timeoutMilliseconds)
            if let tls = c.tls { t.steps.append(certificateStep(tls)) }
            return c
        } catch {
            t.steps.append(step("connect", ok: false, "\(error)"))
            return nil
        }
    }

    private func certificateStep(_ tls: TLSClient) -> ProbeStep {
        let cert = tls.certificate
        let now = Int64(wallClockSeconds())
        let days = (cert.notAfter - now) / 86400
        let failure = tls.verificationFailure
        var detail = "\(tls.version), names \(cert.names.joined(separator: ","))"
        let expired = cert.notAfter <= now
        detail += expired ? ", EXPIRED \((now - cert.notAfter) / 86400) days ago" : ", expires in \(days) days"
        if let failure { detail += options.insecure ? " (not verified: \(failure); --insecure)" : ", not verified: \(failure)" }
        return step("tls certificate", ok: !expired && (failure == nil || options.insecure), detail,
                    [("names", .array(cert.names.map { .string($0) })), ("not_after", .number(Double(cert.notAfter))),
                     ("days_left", .number(Double(days))), ("chain", .array(cert.chain.map { .string($0) })),
                     ("verified", .bool(failure == nil))])
    }

    // MARK: STUN and TURN

    private mutating func probeRelay(_ u: ServerURL) -> ProbeTarget {
        var t = ProbeTarget(url: u.text, host: u.host)
        guard let c = connect(u, alpn: u.transport == .tls ? ["stun.turn"] : [], into: &t) else { return t }
        binding(c, into: &t)
        guard u.kind == .turn else { return t }
        guard let creds = credentials(for: u) else {
            t.steps.append(step("turn allocate", ok: false, "no credentials: give --user and --password, --secret, or a signaling URL whose welcome hands them out"))
            return t
        }
        var client = TURNClient(credentials: creds, reliable: u.transport != .udp, software: "ferry-probe")
        let start = monotonicNanos()
        guard case .allocated(let relayed, _, let lifetime)? = transact(c, &client, client.allocate(lifetime: 60, now: start), into: &t, name: "turn allocate") else {
            return t
        }
        let allocated = monotonicNanos()
        t.steps.append(step("turn allocate", ok: true, "relayed \(relayed), lifetime \(lifetime) s", rtt: (allocated - start) / 1000,
                            [("relayed", .string("\(relayed)"))]))
        // The echo: a channel from the allocation to its own relayed address, one ChannelData
        // out and the same bytes back on the channel (the fast path WireGuard packets take).
        let (number, bind) = client.bindChannel(to: relayed, now: allocated)
        guard case .channelBound? = transact(c, &client, bind, into: &t, name: "turn echo") else { return t }
        var payload = Array("ferry-probe ".utf8) + Crypto.randomBytes(20)
        payload += [UInt8](repeating: 0, count: (4 - payload.count % 4) % 4)
        var frame = [UInt8](repeating: 0, count: 4 + payload.count)
        frame.withUnsafeMutableBytes { ChannelData.writeHeader(channel: number, length: payload.count, at: $0.baseAddress!) }
        frame.replaceSubrange(4..., with: payload)
        let sent = monotonicNanos()
        do {
            try c.send(frame)
            let deadline = sent + UInt64(options.timeoutMilliseconds) * 1_000_000
            while let m = try c.receiveMessage(until: deadline) {
                guard m.count >= 4, ChannelData.isChannelData(firstByte: m[0]) else { continue }
                guard UInt16(m[0]) << 8 | UInt16(m[1]) == number, Array(m[4...]) == payload else { continue }
                t.steps.append(step("turn echo", ok: true, "\(payload.count) bytes out and back through \(relayed) (ChannelData)",
                                    rtt: (monotonicNanos() - sent) / 1000))
                if let bye = client.deallocate(now: monotonicNanos()) { try? c.send(bye) }
                return t
            }
            t.steps.append(step("turn echo", ok: false, "nothing came back through the relay within \(options.timeoutMilliseconds) ms"))
        } catch {
            t.steps.append(step("turn echo", ok: false, "\(error)"))
        }
        return t
    }

    private func credentials(for u: ServerURL) -> TURNClient.Credentials? {
        if let c = options.credentials { return c }
        if let s = options.restSecret {
            return .rest(secret: s, label: "ferry-probe", expiry: wallClockSeconds() + 3600)
        }
        return handedOut[u.host]
    }

    func binding(_ c: ClientConnection, into t: inout ProbeTarget) {
        let tid = TransactionID.random()
        let request = STUNBinding.request(tid)
        let start = monotonicNanos()
        let deadline = start + UInt64(options.timeoutMilliseconds) * 1_000_000
        var resend = start + TURNClient.initialRTO, rto = TURNClient.initialRTO
        do {
            try c.send(request)
            while monotonicNanos() < deadline {
                let wait = c.transport == .udp ? min(resend, deadline) : deadline
                guard let m = try c.receiveMessage(until: wait) else {
                    if c.transport == .udp && monotonicNanos() >= resend {
                        try c.send(request)
                        rto *= 2
                        resend = monotonicNanos() + rto
                    }
                    continue
                }
                let mapped = m.withUnsafeBytes { b -> SocketAddress? in
                    guard case .success(let msg) = STUNMessage.parse(b, exact: true) else { return nil }
                    return STUNBinding.mappedAddress(msg, tid: tid)
                }
                guard let mapped else { continue }
                t.steps.append(step("stun binding", ok: true, "mapped \(mapped)", rtt: (monotonicNanos() - start) / 1000,
                                    [("mapped", .string("\(mapped)"))]))
                return
            }
            t.steps.append(step("stun binding", ok: false, "no answer within \(options.timeoutMilliseconds) ms"))
        } catch {
            t.steps.append(step("stun binding", ok: false, "\(error)"))
        }
    }

    /// Sends `first` and drives the client until it reports an event; a failure or silence
    /// becomes the failing step `name`.
    private func transact(_ c: ClientConnection, _ client: inout TURNClient, _ first: [UInt8], into t: inout ProbeTarget,
                          name: String) -> TURNClient.Event? {
        do {
            if let e = try c.exchange(&client, first, timeoutMilliseconds: options.timeoutMilliseconds) { return failed(e, name: name, into: &t) }
            t.steps.append(step(name, ok: false, "no answer within \(options.timeoutMilliseconds) ms"))
        } catch {
            t.steps.append(step(name, ok: false, "\(error)"))
        }
        return nil
    }

    private func failed(_ e: TURNClient.Event, name: String, into t: inout ProbeTarget) -> TURNClient.Event? {
        guard case .failed(_, let code, let reason) = e else { return e }
        let why = code == 401 ? "401 \(reason): wrong credentials" : code == 0 ? reason : "\(code) \(reason)"
        t.steps.append(step(name, ok: false, why))
        return nil
    }

    // MARK: Signaling

    private mutating func probeSignal(_ u: ServerURL) -> ProbeTarget {
        var t = ProbeTarget(url: u.text, host: u.host)
        let token: String
        if let given = options.token {
            token = given
        } else if let secret = options.tokenSecret {
            token = SignalToken.mint(secret: secret, network: options.network, peer: nil, expiry: wallClockSeconds() + 600)
        } else {
            t.steps.append(step("signal", ok: false, "no token: give --token, or --token-secret (and --network)"))
            return t
        }
        guard let c = connect(u, alpn: u.transport == .tls ? ["http/1.1"] : [], into: &t) else { return t }
        guard var client = SignalClient(privateKey: key, token: token, host: u.host, path: u.path) else {
            t.steps.append(step("signal", ok: false, "the private key is not an X25519 key"))
            return t
        }
        let start = monotonicNanos()
        let deadline = start + UInt64(options.timeoutMilliseconds) * 1_000_000
        do {
            try c.send(client.start())
            while monotonicNanos() < deadline {
                let left = Int32(max(1, (deadline - monotonicNanos()) / 1_000_000))
                guard let bytes = try c.receiveBytes(timeoutMilliseconds: left) else { continue }
                if bytes.isEmpty {
                    if let e = client.connectionLost() { return signalEnded(e, into: &t) }
                    break
                }
                let (events, out) = client.receive(bytes)
                if !out.isEmpty { try c.send(out) }
                for e in events {
                    if case .welcome(let network, let expires, let relays) = e {
                        let rtt = (monotonicNanos() - start) / 1000
                        for r in relays {
                            for url in r.urls {
                                if let s = ServerURL(url) { handedOut[s.host] = .init(username: r.username, password: r.credential) }
                            }
                        }
                        noteNativeCredentials(relays, publicKey: Base64.decode(client.publicKey) ?? [])
                        if relays.contains(where: { !$0.relayToken.isEmpty }) { secondIdentity(u, token: token) }
                        let regions = relays.map { "\($0.region) (\($0.urls.count) url\($0.urls.count == 1 ? "" : "s"))" }
                        t.steps.append(step("signal", ok: true,
                                            "authenticated as \(client.publicKey.prefix(8))…, network \(network), relays handed out: \(regions.isEmpty ? "none" : regions.joined(separator: ", "))",
                                            rtt: rtt,
                                            [("network", .string(network)), ("expires", .number(Double(expires))),
                                             ("relays", .array(relays.map { r in
                                                 .object([("region", .string(r.region)), ("urls", .array(r.urls.map { .string($0) }))])
                                             }))]))
                        try? c.send(client.close())
                        return t
                    }
                    if case .ended = e { return signalEnded(e, into: &t) }
                }
            }
            t.steps.append(step("signal", ok: false, "no welcome within \(options.timeoutMilliseconds) ms"))
        } catch {
            t.steps.append(step("signal", ok: false, "\(error)"))
        }
        return t
    }

    private func signalEnded(_ e: SignalClient.Event, into t: inout ProbeTarget) -> ProbeTarget {
        var why = "\(e)"
        if case .ended(let ending) = e {
            switch ending {
            case .refused(let code): why = "refused: \(code)"
            case .handshake(let s): why = "WebSocket upgrade refused: \(s)"
            case .closed(let code): why = "closed (\(code)) before welcome"
            case .replaced: why = "replaced by another connection with this key"
            case .draining: why = "the server is draining"
            }
        }
        t.steps.append(step("signal", ok: false, why))
        return t
    }
}
