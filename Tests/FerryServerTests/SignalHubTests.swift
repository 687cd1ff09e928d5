import Testing
import Synchronization
import FerryCore
import FerrySignal
@testable import FerryServer

/// The in-process directory answers through `reply`, at once, with entries that carry its
/// instance id: the contract a remote directory keeps too (asynchronously).
@Suite struct SignalHubTests {
    final class Replies: Sendable {
        let log = Mutex<[String]>([])
        func add(_ s: String) { log.withLock { $0.append(s) } }
        var all: [String] { log.withLock { $0 } }
    }

    func at(_ hub: SignalHub, _ worker: Int, _ conn: UInt32) -> SignalLocation {
        SignalLocation(instance: hub.instance, worker: worker, connection: ConnectionID(conn))
    }

    @Test func registerReplaceUnregister() {
        let hub = SignalHub(instance: "i1")
        let r = Replies()
        let first = SignalEntry(location: at(hub, 0, 1), network: "n")
        let second = SignalEntry(location: at(hub, 1, 7), network: "n")
        hub.register("k", first) { r.add("old:\($0 == nil ? "none" : "\($0!.location.connection)")") }
        hub.register("k", second) { r.add("old:\($0 == nil ? "none" : "\($0!.location.connection)")") }
        hub.lookup("k") { r.add("at:\($0!.location.worker)/\($0!.location.instance)") }
        hub.unregister("k", first) { r.add("removed:\($0)") }   // no longer the first's
        hub.unregister("k", second) { r.add("removed:\($0)") }
        hub.lookup("k") { r.add("at:\($0 == nil ? "none" : "?")") }
        #expect(r.all == ["old:none", "old:c1", "at:1/i1", "removed:false", "removed:true", "at:none"])
        #expect(hub.count == 0)
    }

    @Test func presenceIsPerNetwork() {
        let hub = SignalHub(instance: "i1")
        let r = Replies()
        let watcher = at(hub, 0, 3)
        hub.register("a", SignalEntry(location: at(hub, 0, 1), network: "n")) { _ in }
        hub.register("b", SignalEntry(location: at(hub, 0, 2), network: "other")) { _ in }
        hub.subscribe(watcher, network: "n", to: ["a", "b", "c"]) { r.add("online:\($0)") }
        hub.watchers(of: "c", network: "n") { r.add("watchers:\($0.map(\.connection))") }
        hub.watchers(of: "c", network: "other") { r.add("watchers:\($0.count)") }
        hub.unsubscribe(watcher, from: ["c"])
        hub.watchers(of: "c", network: "n") { r.add("watchers:\($0.count)") }
        #expect(r.all == ["online:[\"a\"]", "watchers:[c3]", "watchers:0", "watchers:0"])
    }
}
