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
        hub.subscribe(watcher, network: "n", to: ["a", "b", "c"]) { result in
            if case .subscribed(let online) = result { r.add("online:\(online)") }
        }
        hub.watchers(of: "c", network: "n") { r.add("watchers:\($0.map(\.connection))") }
        hub.watchers(of: "c", network: "other") { r.add("watchers:\($0.count)") }
        hub.unsubscribe(watcher, from: ["c"])
        hub.watchers(of: "c", network: "n") { r.add("watchers:\($0.count)") }
        #expect(r.all == ["online:[\"a\"]", "watchers:[c3]", "watchers:0", "watchers:0"])
    }

    @Test func subscriptionsAreCappedPerNetworkAndInAllAndCountedOnce() {
        let hub = SignalHub(instance: "i1", limits: SubscriptionLimits(perPeer: 100, perNetwork: 5, total: 8))
        let r = Replies()
        func subscribe(_ w: SignalLocation, _ network: String, _ keys: [String]) {
            hub.subscribe(w, network: network, to: keys) { result in
                switch result {
                case .subscribed: r.add("ok")
                case .refused(let scope): r.add("refused:\(scope.rawValue)")
                }
            }
        }
        let w1 = at(hub, 0, 1), w2 = at(hub, 1, 2), w3 = at(hub, 0, 3)
        subscribe(w1, "n", ["a", "b", "c"])
        subscribe(w1, "n", ["a", "b", "c"])          // already watched: free
        #expect(hub.subscriptionCount == 3)
        subscribe(w2, "n", ["a", "b", "c"])          // 6 > 5 in network n: nothing stored
        #expect(hub.subscriptionCount == 3)
        subscribe(w2, "m", ["a", "b", "c", "d", "e"])  // 8 in all: fits exactly
        subscribe(w3, "o", ["z"])                    // 9 > 8
        #expect(r.all == ["ok", "ok", "refused:network", "ok", "refused:server"])
        #expect(hub.subscriptionCount == 8)
        // Released by unsubscribe (only what was watched), which frees room in the network.
        hub.unsubscribe(w1, from: ["a", "x"])
        #expect(hub.subscriptionCount == 7)
        subscribe(w3, "n", ["q"])
        #expect(r.all.last == "ok" && hub.subscriptionCount == 8)
        hub.unsubscribe(w2, from: ["a", "b", "c", "d", "e"])
        hub.unsubscribe(w1, from: ["b", "c"])
        hub.unsubscribe(w3, from: ["q"])
        #expect(hub.subscriptionCount == 0)
    }
}
