/// A reason a counter is labelled with (why a packet was dropped, why a connection closed):
/// cases numbered 0, 1, 2… in declaration order, each with its label spelled out in a switch
/// (so adding a case without a label does not compile).
public protocol CounterReason: RawRepresentable, CaseIterable, Sendable where RawValue == Int {
    /// The metric label value (`reason="…"`).
    var label: String { get }
}

/// One counter per reason, in an array indexed by the reason (as tailscale's derp server keeps
/// its drop counters): a drop costs an index, no hashing. Built from the enum itself, with a
/// check that stops the process when the cases, their numbers and the counters drift apart.
public struct ReasonCounters<Reason: CounterReason>: Sendable {
    public let ids: [CounterID]

    /// `make` registers the counter of one reason (given with its label).
    public init(_ make: (Reason, String) -> CounterID) {
        let cases = Array(Reason.allCases)
        for (i, r) in cases.enumerated() {
            precondition(r.rawValue == i, "\(Reason.self).\(r): raw values must number the cases 0..<\(cases.count) in order")
        }
        precondition(Set(cases.map(\.label)).count == cases.count, "\(Reason.self): two reasons share a label")
        ids = cases.map { make($0, $0.label) }
        precondition(ids.count == cases.count)
    }

    @inlinable public subscript(_ reason: Reason) -> CounterID { ids[reason.rawValue] }
}

/// Where a subsystem registers its metrics (the server's registry, a test's sequential slots), so
/// each subsystem names its own series next to its counters.
public protocol CounterRegistry {
    /// A counter (or a gauge written by one worker) named `name` with `labels`; the same name
    /// and labels give the same slot.
    func counter(_ name: String, _ help: String, labels: [(String, String)], gauge: Bool) -> CounterID
    func histogram(_ name: String, _ help: String, bounds: [UInt64], labels: [(String, String)]) -> HistogramID
}

extension CounterRegistry {
    public func counter(_ name: String, _ help: String, labels: [(String, String)] = []) -> CounterID {
        counter(name, help, labels: labels, gauge: false)
    }

    public func gauge(_ name: String, _ help: String, labels: [(String, String)] = []) -> CounterID {
        counter(name, help, labels: labels, gauge: true)
    }
}

/// Slots numbered 0… in order, for tests and fuzzing (a `CounterBlock.standalone()` holds them).
public final class SequentialCounters: CounterRegistry {
    private var next = 0

    public init() {}

    public func counter(_ name: String, _ help: String, labels: [(String, String)], gauge: Bool) -> CounterID {
        defer { next += 1 }
        return CounterID(index: next)
    }

    public func histogram(_ name: String, _ help: String, bounds: [UInt64], labels: [(String, String)]) -> HistogramID {
        defer { next += bounds.count + 3 }
        return HistogramID(first: next, bounds: bounds)
    }
}
