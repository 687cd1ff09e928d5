import FerryCore
import CFerryLinux
import FerrySystem
import Synchronization

/// Every metric Ferry exports (the table is docs/metrics.md). Series are registered at start,
/// before workers run; each worker gets its own block and the scrape sums the blocks.
/// Ownership: `families`/`series` are written only while registering (before `start`), then
/// read-only; blocks are written by their worker.
public final class MetricsRegistry: @unchecked Sendable {
    public enum Kind: String, Sendable {
        case counter, gauge, histogram
    }

    struct Family {
        let name: String
        let help: String
        let kind: Kind
        var series: [Series] = []
    }

    struct Series {
        let labels: String
        let slot: Int
        let bounds: [UInt64]
    }

    /// Slots per block; registration beyond this traps at start (a programming error).
    public static let capacity = 4096
    private var families: [Family] = []
    private var familyIndex: [String: Int] = [:]
    private var nextSlot = 0
    private let blocks: [CounterBlock]
    /// Values computed at scrape time (readiness, configured limits, build info).
    private let computed = Mutex<[(name: String, help: String, kind: Kind, value: @Sendable () -> [(labels: String, value: Double)])]>([])

    /// `blocks`: one per worker plus one for the control thread.
    public init(blocks count: Int) {
        var blocks: [CounterBlock] = []
        for _ in 0..<count {
            let p = UnsafeMutablePointer<UInt64>.allocate(capacity: MetricsRegistry.capacity)
            p.initialize(repeating: 0, count: MetricsRegistry.capacity)
            blocks.append(CounterBlock(base: p))
        }
        self.blocks = blocks
    }

    deinit {
        for b in blocks { b.base.deallocate() }
    }

    public func block(_ i: Int) -> CounterBlock { blocks[i] }
    public var blockCount: Int { blocks.count }

    private func family(_ name: String, _ help: String, _ kind: Kind) -> Int {
        if let i = familyIndex[name] {
            precondition(families[i].kind == kind, "metric \(name) registered twice with different kinds")
            return i
        }
        families.append(Family(name: name, help: help, kind: kind))
        familyIndex[name] = families.count - 1
        return families.count - 1
    }

    private func allocate(_ n: Int) -> Int {
        precondition(nextSlot + n <= MetricsRegistry.capacity, "metrics capacity exceeded")
        defer { nextSlot += n }
        return nextSlot
    }

    /// Registers a counter (or a summed per-worker gauge with `kind: .gauge`) series. Registering
    /// the same name and labels again returns the same slot.
    public func counter(_ name: String, _ help: String, labels: [(String, String)] = [], kind: Kind = .counter) -> CounterID {
        let f = family(name, help, kind)
        let text = MetricsRegistry.labelText(labels)
        if let s = families[f].series.first(where: { $0.labels == text }) { return CounterID(index: s.slot) }
        let slot = allocate(1)
        families[f].series.append(Series(labels: text, slot: slot, bounds: []))
        return CounterID(index: slot)
    }

    public func histogram(_ name: String, _ help: String, bounds: [UInt64], labels: [(String, String)] = []) -> HistogramID {
        let f = family(name, help, .histogram)
        let text = MetricsRegistry.labelText(labels)
        if let s = families[f].series.first(where: { $0.labels == text }) { return HistogramID(first: s.slot, bounds: s.bounds) }
        let slot = allocate(bounds.count + 3)
        families[f].series.append(Series(labels: text, slot: slot, bounds: bounds))
        return HistogramID(first: slot, bounds: bounds)
    }

    /// A counter kept outside the blocks (atomics of a thread that is not a worker), read when scraped.
    public func computedCounter(_ name: String, _ help: String, _ value: @escaping @Sendable () -> [(labels: String, value: Double)]) {
        computed.withLock { $0.append((name, help, .counter, value)) }
    }

    /// A gauge computed when scraped.
    public func computedGauge(_ name: String, _ help: String, _ value: @escaping @Sendable () -> [(labels: String, value: Double)]) {
        computed.withLock { $0.append((name, help, .gauge, value)) }
    }

    static func labelText(_ labels: [(String, String)]) -> String {
        labels.map { k, v in
            var escaped = ""
            for c in v {
                switch c {
                case "\\": escaped += "\\\\"
                case "\"": escaped += "\\\""
                case "\n": escaped += "\\n"
                default: escaped.append(c)
                }
            }
            return "\(k)=\"\(escaped)\""
        }.joined(separator: ",")
    }

    private func sum(_ slot: Int) -> UInt64 {
        var total: UInt64 = 0
        for b in blocks { total &+= ferry_counter_load(b.base + slot) }
        return total
    }

    /// Sum of one counter over all blocks.
    public func total(_ id: CounterID) -> UInt64 { sum(id.index) }

    /// Prometheus text exposition format 0.0.4.
    public func render() -> String {
        var out = ""
        for f in families {
            out += "# HELP \(f.name) \(f.help)\n# TYPE \(f.name) \(f.kind.rawValue)\n"
            for s in f.series {
                if f.kind == .histogram {
                    var cumulative: UInt64 = 0
                    for (i, bound) in s.bounds.enumerated() {
                        cumulative &+= sum(s.slot + i)
                        out += "\(f.name)_bucket{\(join(s.labels, "le=\"\(bound)\""))} \(cumulative)\n"
                    }
                    cumulative &+= sum(s.slot + s.bounds.count)
                    out += "\(f.name)_bucket{\(join(s.labels, "le=\"+Inf\""))} \(cumulative)\n"
                    let braces = s.labels.isEmpty ? "" : "{\(s.labels)}"
                    out += "\(f.name)_sum\(braces) \(sum(s.slot + s.bounds.count + 1))\n"
                    out += "\(f.name)_count\(braces) \(sum(s.slot + s.bounds.count + 2))\n"
                } else {
                    let braces = s.labels.isEmpty ? "" : "{\(s.labels)}"
                    out += "\(f.name)\(braces) \(sum(s.slot))\n"
                }
            }
        }
        for g in computed.withLock({ $0 }) {
            out += "# HELP \(g.name) \(g.help)\n# TYPE \(g.name) \(g.kind.rawValue)\n"
            for v in g.value() {
                let braces = v.labels.isEmpty ? "" : "{\(v.labels)}"
                let number = v.value == v.value.rounded() && abs(v.value) < 1e15 ? String(Int64(v.value)) : String(v.value)
                out += "\(g.name)\(braces) \(number)\n"
            }
        }
        return out
    }

    private func join(_ a: String, _ b: String) -> String { a.isEmpty ? b : "\(a),\(b)" }
}

extension MetricsRegistry: CounterRegistry {
    public func counter(_ name: String, _ help: String, labels: [(String, String)], gauge: Bool) -> CounterID {
        counter(name, help, labels: labels, kind: gauge ? .gauge : .counter)
    }
}
