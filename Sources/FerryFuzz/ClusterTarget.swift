import FerryCore
import FerrySignal

/// What another instance (or anyone who may publish under the prefix) sends over NATS: subjects
/// and payloads (docs/deployment.md). First byte: 0 a subject, else a payload. A subject that
/// parses names a key that is a key; a payload that parses encodes back to itself.
enum ClusterTarget {
    static let subjects = ClusterSubjects(prefix: "ferry", instance: "fuzz")!

    static func run(_ data: UnsafeRawBufferPointer) {
        guard let first = data.first else { return }
        let rest = UnsafeRawBufferPointer(rebasing: data.dropFirst())
        if first == 0 {
            let text = String(decoding: rest, as: UTF8.self)
            switch subjects.parse(Substring(text)) {
            case .peer(_, let key)?, .presence(_, let key)?:
                require(KeyText.isKey(key), "a parsed subject names a key: \(key)")
            case .routeReply(let worker, _)?, .queryReply(let worker, _, _)?:
                require(worker >= 0 && worker < 1024, "worker in range")
            default:
                break
            }
        } else if let p = ClusterPayload.parse(rest) {
            let again = p.encoded().withUnsafeBytes { ClusterPayload.parse($0) }
            require(again == p, "a payload round-trips: \(p)")
            if case .holds(_, let keys) = p { require(keys.count <= ClusterPayload.maxQueryKeys, "bounded answer") }
        } else {
            let keys = ClusterPayload.parseQuery(rest)
            require(keys.count <= ClusterPayload.maxQueryKeys && keys.allSatisfy(KeyText.isKey), "a query keeps keys only")
        }
    }
}
