#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Foundation
import FerryCore
import FerrySystem
import FerryConfig
import FerryWire
import FerryTURN
import FerrySignal
import Synchronization

/// The admin endpoint's routes (docs/admin-api.md): the status page and `/v1/status` for
/// everyone who can reach the admin address (aggregates only, like `/metrics`); the session
/// listings and every endpoint that changes state only for a caller with `admin.token`.
///
/// Runs on the control thread. What lives on the workers (allocations, signaling sessions) is
/// asked of them through their mailboxes, and the control thread waits for the answers (at most
/// `AdminAPI.workerTimeout`): an admin request may take that long, a packet never waits.
enum AdminAPI {
    static let workerTimeout = DispatchTimeInterval.seconds(2)
    /// Page size of the listings when `limit` is not given, and the largest allowed.
    static let defaultLimit = 100
    static let maxLimit = 1000

    /// `?a=b&c=d`, percent-decoded (`+` is a space).
    static func query(_ target: String) -> [String: String] {
        guard let q = target.split(separator: "?", maxSplits: 1).dropFirst().first else { return [:] }
        var out: [String: String] = [:]
        for pair in q.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let k = decode(kv[0]) else { continue }
            out[k] = kv.count > 1 ? decode(kv[1]) ?? "" : ""
        }
        return out
    }

    static func decode(_ s: Substring) -> String? {
        var bytes: [UInt8] = []
        var i = s.utf8.startIndex
        let u = s.utf8
        while i < u.endIndex {
            let c = u[i]
            if c == UInt8(ascii: "%") {
                let h = u.index(after: i)
                guard h < u.endIndex, u.index(after: h) < u.endIndex,
                      let v = UInt8(String(decoding: [u[h], u[u.index(after: h)]], as: UTF8.self), radix: 16) else { return nil }
                bytes.append(v)
                i = u.index(h, offsetBy: 2)
            } else {
                bytes.append(c == UInt8(ascii: "+") ? UInt8(ascii: " ") : c)
                i = u.index(after: i)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    static func json(_ status: Int, _ value: JSONValue, headers: [(String, String)] = []) -> HTTPAnswer {
        var a = HTTPAnswer(status: status, contentType: "application/json", body: "", headers: headers + [("Cache-Control", "no-store")])
        a.body = value.encoded() + [10]
        return a
    }

    static func error(_ status: Int, _ message: String, headers: [(String, String)] = []) -> HTTPAnswer {
        json(status, .object([("error", .string(message))]), headers: headers)
    }

    /// One page of `items`: `offset` and `limit` from the query (400 when malformed).
    static func page(_ items: [JSONValue], query q: [String: String]) -> HTTPAnswer {
        let offset = q["offset"].map { Int($0) } ?? 0
        let limit = q["limit"].map { Int($0) } ?? defaultLimit
        guard let offset, let limit, offset >= 0, (1...maxLimit).contains(limit) else {
            return error(400, "offset must be ≥ 0 and limit 1–\(maxLimit)")
        }
        let slice = offset < items.count ? Array(items[offset..<min(items.count, offset + limit)]) : []
        return json(200, .object([("total", .number(Double(items.count))), ("offset", .number(Double(offset))),
                                  ("limit", .number(Double(limit))), ("items", .array(slice))]))
    }

    static func number(_ v: UInt64) -> JSONValue { .number(Double(v)) }
}

/// Answers gathered from every worker (a box, so that the closures run there can share it).
final class WorkerAnswers<T: Sendable>: Sendable {
    let answers: Mutex<[T?]>
    let done = DispatchSemaphore(value: 0)
    init(_ n: Int) { answers = Mutex([T?](repeating: nil, count: n)) }
}

extension Server {
    /// Asks every worker `question` on its own thread and waits for all the answers; nil when
    /// one did not answer within `AdminAPI.workerTimeout` (a wedged worker, or a stopping one).
    func askWorkers<T: Sendable>(_ question: @escaping @Sendable (Int) -> T) -> [T]? {
        let box = WorkerAnswers<T>(engine.loops.count)
        for loop in engine.loops {
            loop.execute { l in
                let a = question(l.index)
                box.answers.withLock { $0[l.index] = a }
                box.done.signal()
            }
        }
        let deadline = DispatchTime.now() + AdminAPI.workerTimeout
        for _ in engine.loops where box.done.wait(timeout: deadline) == .timedOut { return nil }
        return box.answers.withLock { $0.compactMap { $0 } }
    }

    // MARK: Routes

    func route(_ head: HTTPRequestHead) -> HTTPAnswer {
        let path = String(head.path)
        let read = head.method == "GET" || head.method == "HEAD"
        switch path {
        case "/metrics":
            guard read else { return Server.methodNotAllowed("GET, HEAD") }
            return HTTPAnswer(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: metrics.render())
        case "/", "/v1/status":
            guard read else { return Server.methodNotAllowed("GET, HEAD") }
            return statusAnswer(page: path == "/", detailed: hasAdminToken(head))
        case "/v1/allocations", "/v1/peers":
            guard read else { return Server.methodNotAllowed("GET, HEAD") }
            if let refused = authorize(head) { return refused }
            return path == "/v1/allocations" ? listAllocations(AdminAPI.query(head.target)) : listPeers(AdminAPI.query(head.target))
        case "/v1/allocations/end", "/v1/peers/end", "/v1/reload", "/v1/drain":
            guard head.method == "POST" else { return Server.methodNotAllowed("POST") }
            if let refused = HTTPSession.bodyRefusal(head) { return refused }
            if let refused = authorize(head) { return refused }
            let q = AdminAPI.query(head.target)
            switch path {
            case "/v1/allocations/end": return endAllocations(q)
            case "/v1/peers/end": return endPeers(q)
            case "/v1/reload": return reloadByAPI()
            default: return drainByAPI()
            }
        default:
            return Server.healthRoute(head, state: state)
        }
    }

    static func methodNotAllowed(_ allow: String) -> HTTPAnswer {
        AdminAPI.error(405, "method not allowed", headers: [("Allow", allow)])
    }

    /// The status page and /v1/status. Rendering them reads and parses every metric (a few
    /// milliseconds), so the open view (aggregates only) is rendered at most once per
    /// `statusCacheNanos` (and again after a reload or a drain begins) and served from that copy, GET and HEAD alike: a flood of requests
    /// without the token costs a copy each, not a render. A caller with the token gets a fresh,
    /// detailed one (certificate names and files).
    func statusAnswer(page: Bool, detailed: Bool) -> HTTPAnswer {
        let headers = [("Cache-Control", "no-store")]
        let now = control.now
        let body: [UInt8]
        if detailed {
            let status = statusJSON(detailed: true)
            body = page ? Array(StatusPage.render(status).utf8) : status.encoded() + [10]
        } else {
            if statusCache == nil || now >= statusCache!.at + Server.statusCacheNanos {
                let status = statusJSON(detailed: false)
                statusCache = (now, status.encoded() + [10], Array(StatusPage.render(status).utf8))
            }
            body = page ? statusCache!.page : statusCache!.json
        }
        var a = HTTPAnswer(status: 200, contentType: page ? "text/html; charset=utf-8" : "application/json", body: "",
                           headers: page ? headers + [("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")] : headers)
        a.body = body
        return a
    }

    static let statusCacheNanos: UInt64 = 250_000_000

    /// Whether the caller sent `Authorization: Bearer <admin.token>` (nothing counted).
    func hasAdminToken(_ head: HTTPRequestHead) -> Bool {
        guard let token = adminToken else { return false }
        let given = head.header("Authorization").flatMap { h -> [UInt8]? in
            guard h.lowercased().hasPrefix("bearer ") else { return nil }
            return Array(h.dropFirst(7).trimmingCharacters(in: .whitespaces).utf8)
        }
        guard let given else { return false }
        return Crypto.constantTimeEqual(given, token)
    }

    /// nil when the caller sent `Authorization: Bearer <admin.token>`; else the refusal.
    func authorize(_ head: HTTPRequestHead) -> HTTPAnswer? {
        guard adminToken != nil else {
            countAdminRefusal()
            return AdminAPI.error(403, "set admin.token (or admin.token_file) to use this endpoint")
        }
        guard hasAdminToken(head) else {
            countAdminRefusal()
            return AdminAPI.error(401, "a bearer token is required (admin.token)", headers: [("WWW-Authenticate", "Bearer realm=\"ferry admin\"")])
        }
        return nil
    }

    private func countAdminRefusal() {
        if let c = adminUnauthorized { metrics.block(engine.loops.count).add(c) }
    }

    /// The token from `admin.token_file` (its first line) or `admin.token`; nil when neither.
    /// A token file that group or others may read is accepted with a warning in the log.
    static func adminToken(_ a: FerryConfig.Admin, warn: (String) -> Void = { _ in }) throws -> [UInt8]? {
        if !a.tokenFile.isEmpty {
            var st = stat()
            if stat(a.tokenFile, &st) == 0 && st.st_mode & 0o077 != 0 {
                warn("admin.token_file \(a.tokenFile) may be read by others (mode \(String(st.st_mode & 0o777, radix: 8))): make it 0600 or 0640 for ferryd's group")
            }
            guard let bytes = Files.read(a.tokenFile) else { throw SystemError(call: "read admin.token_file \(a.tokenFile)", errno: ENOENT) }
            let line = String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
            guard line.utf8.count >= 16 else { throw SystemError(call: "admin.token_file \(a.tokenFile): the token is shorter than 16 characters", errno: EINVAL) }
            return Array(line.utf8)
        }
        return a.token.isEmpty ? nil : Array(a.token.utf8)
    }

    // MARK: Sessions

    private func allocationItems() -> [(AllocationRecord, String)]? {
        guard !turnServices.isEmpty else { return [] }
        return askWorkers { [self] i in
            let t = turnServices[i]
            return t.server.allocationRecords(now: engine.loops[i].now).map { ($0, t.transportName($0.transport)) }
        }?.flatMap { $0 }.sorted { $0.0.created < $1.0.created }
    }

    static func allocationMatches(_ r: AllocationRecord, _ q: [String: String]) -> Bool {
        if let u = q["user"], r.user != u && r.username != u { return false }
        if let c = q["client"], "\(r.client.ip)" != c && "\(r.client)" != c { return false }
        return true
    }

    static func allocationJSON(_ r: AllocationRecord, transport: String) -> JSONValue {
        .object([("user", .string(r.user)), ("username", .string(r.username)), ("client", .string("\(r.client)")),
                 ("transport", .string(transport)), ("relayed", .array(r.relayed.map { .string("\($0)") })),
                 ("started", .string(SessionLog.iso(r.created))), ("age_seconds", AdminAPI.number(r.ageSeconds)),
                 ("expires_in_seconds", AdminAPI.number(r.expiresInSeconds)), ("permissions", .number(Double(r.permissions))),
                 ("channels", .number(Double(r.channels))),
                 ("packets_from_client", AdminAPI.number(r.packetsToPeer)), ("bytes_from_client", AdminAPI.number(r.bytesToPeer)),
                 ("packets_to_client", AdminAPI.number(r.packetsToClient)), ("bytes_to_client", AdminAPI.number(r.bytesToClient))])
    }

    private func listAllocations(_ q: [String: String]) -> HTTPAnswer {
        guard let all = allocationItems() else { return AdminAPI.error(503, "a worker did not answer in time") }
        return AdminAPI.page(all.filter { Server.allocationMatches($0.0, q) }.map { Server.allocationJSON($0.0, transport: $0.1) }, query: q)
    }

    private func endAllocations(_ q: [String: String]) -> HTTPAnswer {
        guard q["user"] != nil || q["client"] != nil else {
            return AdminAPI.error(400, "name the allocations to end: ?user=NAME or ?client=IP[:PORT]")
        }
        guard !turnServices.isEmpty else { return AdminAPI.json(200, .object([("ended", .number(0))])) }
        guard let counts = askWorkers({ [self] i in
            turnServices[i].server.endAllocations(now: engine.loops[i].now) { Server.allocationMatches($0, q) }
        }) else { return AdminAPI.error(503, "a worker did not answer in time") }
        let ended = counts.reduce(0, +)
        logger.notice("allocations ended through the admin API", metadata: ["user": "\(q["user"] ?? "-")", "client": "\(q["client"] ?? "-")",
                                                                             "ended": "\(ended)"])
        return AdminAPI.json(200, .object([("ended", .number(Double(ended)))]))
    }

    static func peerMatches(_ r: SignalWorker.PeerRecord, _ q: [String: String]) -> Bool {
        if let p = q["peer"], r.peer != p { return false }
        if let n = q["network"], r.network != n { return false }
        return true
    }

    private func listPeers(_ q: [String: String]) -> HTTPAnswer {
        guard !signalWorkers.all.isEmpty else { return AdminAPI.page([], query: q) }
        guard let all = askWorkers({ [self] i in signalWorkers.all[i].peerRecords() }) else {
            return AdminAPI.error(503, "a worker did not answer in time")
        }
        let items = all.flatMap { $0 }.filter { Server.peerMatches($0, q) }.sorted { $0.ageSeconds > $1.ageSeconds }.map { r -> JSONValue in
            .object([("peer", .string(r.peer)), ("network", .string(r.network)), ("client", .string("\(r.client)")),
                     ("transport", .string(r.transport)), ("age_seconds", AdminAPI.number(r.ageSeconds)),
                     ("messages_from_client", AdminAPI.number(r.messagesIn)), ("bytes_from_client", AdminAPI.number(r.bytesIn)),
                     ("messages_to_client", AdminAPI.number(r.messagesOut)), ("bytes_to_client", AdminAPI.number(r.bytesOut)),
                     ("queued_messages", .number(Double(r.queued)))])
        }
        return AdminAPI.page(items, query: q)
    }

    private func endPeers(_ q: [String: String]) -> HTTPAnswer {
        guard q["peer"] != nil || q["network"] != nil else {
            return AdminAPI.error(400, "name the sessions to end: ?peer=KEY or ?network=NAME")
        }
        guard !signalWorkers.all.isEmpty else { return AdminAPI.json(200, .object([("ended", .number(0))])) }
        guard let counts = askWorkers({ [self] i in signalWorkers.all[i].endSessions { Server.peerMatches($0, q) } }) else {
            return AdminAPI.error(503, "a worker did not answer in time")
        }
        let ended = counts.reduce(0, +)
        logger.notice("signaling sessions ended through the admin API", metadata: ["peer": "\(q["peer"] ?? "-")", "network": "\(q["network"] ?? "-")",
                                                                                   "ended": "\(ended)"])
        return AdminAPI.json(200, .object([("ended", .number(Double(ended)))]))
    }

    // MARK: Reload and drain

    private func reloadByAPI() -> HTTPAnswer {
        guard reloadSource != nil else { return AdminAPI.error(409, "running on the built-in default config: there is no file to reload") }
        let ok = reload(origin: "admin API")
        return AdminAPI.json(ok ? 200 : 422, .object([("result", .string(ok ? "ok" : "failed")),
                                                      ("detail", .string(ok ? "configuration reloaded" : "see the log: the running configuration stays"))]))
    }

    /// One drain, however many ask: a request while one is pending or running is answered 202
    /// for that same drain and never becomes the "second stop signal" that stops at once (that
    /// escalation is SIGTERM's and SIGINT's alone).
    private func drainByAPI() -> HTTPAnswer {
        if drainRequested || state.draining.load(ordering: .relaxed) {
            return AdminAPI.json(202, .object([("draining", .bool(true)), ("already", .bool(true))]))
        }
        drainRequested = true
        // After this answer is written: a drain with no session left stops the process at once.
        control.schedule(after: 50_000_000) { [unowned self] in
            if !self.state.draining.load(ordering: .relaxed) { self.beginDrain("admin API") }
        }
        return AdminAPI.json(202, .object([("draining", .bool(true)), ("drain_seconds", .number(Double(config.server.drainSeconds)))]))
    }
}
