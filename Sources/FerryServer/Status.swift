#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerryCore
import FerrySystem
import FerryConfig
import FerrySignal

/// The series of one `/metrics` rendering, parsed back: the status reads its counts from the
/// same text a scrape gets, so `/v1/status` and `/metrics` cannot disagree.
struct MetricsSnapshot {
    struct Series {
        var name: String
        var labels: [String: String]
        var value: Double
    }
    var series: [Series] = []

    init(_ text: String) {
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let key = line[..<space]
            var labels: [String: String] = [:]
            let name: Substring
            if let brace = key.firstIndex(of: "{") {
                name = key[..<brace]
                var rest = key[key.index(after: brace)...].dropLast()  // without the closing brace
                while let eq = rest.firstIndex(of: "=") {
                    let label = String(rest[..<eq])
                    var i = rest.index(eq, offsetBy: 2)  // past ="
                    var v = ""
                    while i < rest.endIndex && rest[i] != "\"" {
                        if rest[i] == "\\" { i = rest.index(after: i) }
                        if i < rest.endIndex { v.append(rest[i]) }
                        i = rest.index(after: i)
                    }
                    labels[label] = v
                    rest = i < rest.endIndex ? rest[rest.index(after: i)...].drop { $0 == "," } : ""
                }
            } else {
                name = key
            }
            series.append(Series(name: String(name), labels: labels, value: value))
        }
    }

    func sum(_ name: String, where match: [String: String] = [:]) -> Double {
        series.filter { s in s.name == name && match.allSatisfy { k, v in s.labels[k] == v } }.reduce(0) { $0 + $1.value }
    }

    /// `name`'s series by the value of `label` (summed over the other labels).
    func by(_ name: String, _ label: String) -> [(String, Double)] {
        var out: [String: Double] = [:]
        for s in series where s.name == name { out[s.labels[label] ?? "", default: 0] += s.value }
        return out.sorted { $0.key < $1.key }
    }
}

/// What the status page charts over the last minutes: a sample of the counters every
/// `interval`, `capacity` of them (control thread).
struct StatusHistory {
    static let capacity = 31  // 30 intervals: five minutes at the default 10 s
    /// `admin.status_interval_seconds`.
    var intervalSeconds: UInt64 = 10

    struct Sample {
        var at: UInt64
        var toPeerBytes: Double
        var toClientBytes: Double
        var packets: Double
        var drops: Double
        var allocations: Double
        var peers: Double
        /// CPU seconds of each worker thread so far.
        var workerCPU: [Double]
    }
    var samples: [Sample] = []

    mutating func add(_ s: Sample) {
        samples.append(s)
        if samples.count > StatusHistory.capacity { samples.removeFirst(samples.count - StatusHistory.capacity) }
    }

    /// Per second, between consecutive samples (counters that went back, as after nothing, read 0).
    func rates(_ value: (Sample) -> Double) -> [Double] {
        zip(samples, samples.dropFirst()).map { a, b in
            let dt = Double(max(1, b.at - a.at))
            return max(0, value(b) - value(a)) / dt
        }
    }

    /// Each worker's load over the last interval: the share of one core its thread used.
    var workerLoad: [Double] {
        guard samples.count >= 2 else { return [] }
        let a = samples[samples.count - 2], b = samples[samples.count - 1]
        let dt = Double(max(1, b.at - a.at))
        return zip(a.workerCPU, b.workerCPU).map { min(1, max(0, ($1 - $0) / dt)) }
    }

    /// CPU seconds of this process's threads named `ferry-w0`, `ferry-w1`, …, by worker index.
    static func workerCPUSeconds(workers: Int) -> [Double] {
        var out = [Double](repeating: 0, count: workers)
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task") else { return out }
        for t in tasks {
            guard let comm = Files.read("/proc/self/task/\(t)/comm"),
                  let name = String(validating: comm, as: UTF8.self)?.trimmingCharacters(in: .whitespacesAndNewlines),
                  name.hasPrefix("ferry-w"), let i = Int(name.dropFirst(7)), i < workers,
                  let stat = Files.read("/proc/self/task/\(t)/stat") else { continue }
            // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
            let text = String(decoding: stat, as: UTF8.self)
            guard let close = text.lastIndex(of: ")") else { continue }
            let fields = text[text.index(after: close)...].split(separator: " ")
            guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { continue }
            out[i] = (user + system) / ticks
        }
        return out
    }
}

extension Server {
    /// Takes a history sample now and every `StatusHistory.intervalSeconds` after.
    func startStatusHistory() {
        sampleStatus()
        history.intervalSeconds = UInt64(config.admin.statusIntervalSeconds)
        control.schedule(after: history.intervalSeconds * 1_000_000_000) { [unowned self] in self.startStatusHistory() }
    }

    private func sampleStatus() {
        let m = MetricsSnapshot(metrics.render())
        history.add(StatusHistory.Sample(
            at: wallClockSeconds(),
            toPeerBytes: m.sum("ferry_turn_relayed_bytes_total", where: ["direction": "to_peer"]),
            toClientBytes: m.sum("ferry_turn_relayed_bytes_total", where: ["direction": "to_client"]),
            packets: m.sum("ferry_turn_relayed_packets_total"),
            drops: Server.drops(m),
            allocations: m.sum("ferry_turn_allocations_active"),
            peers: m.sum("ferry_signal_peers_connected"),
            workerCPU: StatusHistory.workerCPUSeconds(workers: engine.loops.count)))
    }

    /// Every drop counted anywhere: TURN's, the UDP listeners', signaling's messages.
    static func drops(_ m: MetricsSnapshot) -> Double {
        m.sum("ferry_turn_drops_total") + m.sum("ferry_udp_drops_total") + m.sum("ferry_signal_messages_dropped_total")
            + m.sum("ferry_signal_queue_dropped_total") + m.sum("ferry_relay_drops_total")
    }

    /// `/v1/status` (and, rendered, the status page): docs/admin-api.md.
    /// `detailed`: for a caller with the admin token, certificates with their names and files;
    /// else aggregates only (expiry), like /metrics.
    func statusJSON(detailed: Bool = true) -> JSONValue {
        let m = MetricsSnapshot(metrics.render())
        let now = wallClockSeconds()
        let started = m.sum("ferry_start_time_seconds")
        let n = { (v: Double) -> JSONValue in .number(v) }
        let reload: JSONValue = .object([
            ("last", lastReload.map { .string(SessionLog.iso($0.at)) } ?? .null),
            ("result", lastReload.map { .string($0.ok ? "ok" : "failed") } ?? .null),
            ("origin", lastReload.map { .string($0.origin) } ?? .null),
            ("ok_total", n(m.sum("ferry_reloads_total", where: ["result": "ok"]))),
            ("failed_total", n(m.sum("ferry_reloads_total", where: ["result": "failed"]))),
        ])
        let listeners: [JSONValue] = config.listeners.map { l in
            .object([("name", .string(l.name)), ("service", .string(l.service.rawValue)), ("transport", .string(l.transport.rawValue)),
                     ("address", .string(boundAddresses[l.name].map { "\($0)" } ?? "\(l.address)"))])
        } + (boundAddresses["admin"].map { [.object([("name", .string("admin")), ("service", .string("admin")),
                                                     ("transport", .string("tcp")), ("address", .string("\($0)"))])] } ?? [])
        let load = history.workerLoad
        let workers: [JSONValue] = (0..<engine.loops.count).map { i in
            .object([("index", n(Double(i))),
                     ("allocations", turnCounters.map { n(Double(metrics.block(i).load($0.allocationsActive))) } ?? n(0)),
                     ("load", i < load.count ? n((load[i] * 1000).rounded() / 1000) : .null)])
        }
        let certificates: [JSONValue] = (tlsContexts?.certificates ?? []).map { c in
            let expiry: [(String, JSONValue)] = [
                ("not_after", .string(SessionLog.iso(UInt64(max(0, c.notAfter))))),
                ("days_left", n((Double(c.notAfter) - Double(now)) / 86400 >= 0 ? ((Double(c.notAfter) - Double(now)) / 86400).rounded(.down) : -1))]
            return .object(detailed ? [("names", .array(c.names.map { .string($0) })), ("source", .string(c.source))] + expiry : expiry)
        }
        func series(_ rates: [Double]) -> JSONValue { .array(rates.map { n(($0 * 10).rounded() / 10) }) }
        func reasons(_ name: String, _ label: String, prefix: String) -> [(String, JSONValue)] {
            m.by(name, label).filter { $0.1 > 0 }.map { (prefix + $0.0, n($0.1)) }
        }
        var drops = reasons("ferry_turn_drops_total", "reason", prefix: "")
        drops += reasons("ferry_udp_drops_total", "reason", prefix: "udp_")
        drops += reasons("ferry_signal_messages_dropped_total", "reason", prefix: "signal_")
        drops += [("signal_queue_full", n(m.sum("ferry_signal_queue_dropped_total")))].filter { $0.1 != .number(0) }
        drops += reasons("ferry_relay_drops_total", "reason", prefix: "relay_")
        let nativeRelay: JSONValue = relay == nil ? .null : .object([
            ("sessions", n(m.sum("ferry_relay_sessions"))), ("active", n(m.sum("ferry_relay_sessions_active"))),
            ("max", n(Double(config.relay.maxSessions))), ("indices", n(m.sum("ferry_relay_indices"))),
            ("packets_total", n(m.sum("ferry_relay_packets_total"))), ("bytes_total", n(m.sum("ferry_relay_bytes_total"))),
            ("binds_by_result", .object(reasons("ferry_relay_binds_total", "result", prefix: ""))),
            ("streams_total", n(m.sum("ferry_relay_streams_total"))),
        ])
        return .object([
            ("version", .string(FerryVersion.string)),
            ("started", .string(SessionLog.iso(UInt64(started)))),
            ("uptime_seconds", n(max(0, Double(now) - started).rounded(.down))),
            ("ready", .bool(m.sum("ferry_ready") == 1)),
            ("draining", .bool(m.sum("ferry_draining") == 1)),
            ("reload", reload),
            ("listeners", .array(listeners)),
            ("workers", .array(workers)),
            ("allocations", .object([("active", n(m.sum("ferry_turn_allocations_active"))),
                                     ("max", n(Double(config.turn.maxAllocations))),
                                     ("created_total", n(m.sum("ferry_turn_allocations_created_total"))),
                                     ("failed_total", n(m.sum("ferry_turn_allocations_failed_total"))),
                                     ("failed_by_reason", .object(m.by("ferry_turn_allocations_failed_total", "reason")
                                        .filter { $0.1 > 0 }.map { ($0.0, n($0.1)) }))])),
            ("signaling", .object([("enabled", .bool(config.signal.enabled)),
                                   ("peers", n(m.sum("ferry_signal_peers_connected"))),
                                   ("routed_total", n(m.sum("ferry_signal_messages_routed_total"))),
                                   ("nats", natsDirectory.map { d in .object([
                                       ("instance", .string(d.instance)),
                                       ("connected", .bool(d.link.isConnected.load(ordering: .relaxed))),
                                       ("server", detailed ? .string(d.link.connectedURL) : .null),
                                       ("instances_seen", n(Double(d.instancesSeen))),
                                       ("forwarded_total", n(m.sum("ferry_signal_messages_forwarded_total"))),
                                       ("delivered_total", n(m.sum("ferry_signal_nats_delivered_total"))),
                                       ("dropped_total", n(m.sum("ferry_signal_nats_dropped_total")))]) } ?? .null)])),
            ("native_relay", nativeRelay),
            ("descriptors", .object([("open", n(Double(DescriptorLimit.openCount()))), ("limit", n(Double(DescriptorLimit.limit()))),
                                     ("at_limit", .bool(DescriptorLimit.recentlyHit(now: monotonicNanos()))),
                                     ("last_at_limit_seconds_ago", DescriptorLimit.sinceLastHit(now: monotonicNanos()).map { n(Double($0 / 1_000_000_000)) } ?? .null)])),
            ("connections", .object([("active", n(m.sum("ferry_connections_active")))])),
            ("relayed", .object([("bytes_to_peer_total", n(m.sum("ferry_turn_relayed_bytes_total", where: ["direction": "to_peer"]))),
                                 ("bytes_to_client_total", n(m.sum("ferry_turn_relayed_bytes_total", where: ["direction": "to_client"]))),
                                 ("packets_total", n(m.sum("ferry_turn_relayed_packets_total")))])),
            ("drops_total", n(Server.drops(m))),
            ("drops_by_reason", .object(drops)),
            ("history", .object([
                ("interval_seconds", n(Double(history.intervalSeconds))),
                ("end", history.samples.last.map { .string(SessionLog.iso($0.at)) } ?? .null),
                ("bytes_to_peer_per_second", series(history.rates { $0.toPeerBytes })),
                ("bytes_to_client_per_second", series(history.rates { $0.toClientBytes })),
                ("packets_per_second", series(history.rates { $0.packets })),
                ("drops_per_second", series(history.rates { $0.drops })),
                ("allocations", .array(history.samples.map { n($0.allocations) })),
            ])),
            ("certificates", .array(certificates)),
        ])
    }
}
