import FerryCore
import FerryWire
import FerrySignal
import FerrySystem

/// What other instances send: on cnats's delivery thread, which takes the hub's lock briefly and
/// posts deliveries to workers; it never waits for a worker.
extension NATSDirectory {
    func received(subject: String, reply: String?, data: UnsafeRawBufferPointer, noResponders: Bool) {
        stats.add(.messagesIn)
        guard let incoming = subjects.parse(Substring(subject)) else { return stats.add(.droppedMalformed) }
        switch incoming {
        case .peer(let token, let key):
            if data.first == UInt8(ascii: "{") {
                routed(Array(data), to: key, networkToken: token, reply: reply)
            } else if case .claim(let since, let other)? = ClusterPayload.parse(data), other != instance {
                claimed(key, networkToken: token, since: since, by: other)
            }
        case .presence(let token, let key):
            guard case .presence(let online, let other)? = ClusterPayload.parse(data), other != instance else { return }
            presence(key, networkToken: token, online: online, at: other)
        case .query(let token):
            // Our own query comes back too (NATS echoes): what is local was answered already.
            guard let reply, !reply.hasPrefix(subjects.inboxWildcard.dropLast()) else { return }
            answer(ClusterPayload.parseQuery(data), networkToken: token, reply: reply)
        case .routeReply(let worker, let sequence):
            guard worker < pending.count else { return }
            guard noResponders || ClusterPayload.parse(data) == .gone else { return }
            guard let (conn, offline) = pending[worker].ring.withLock({ $0.take(sequence) }) else { return stats.add(.lateAnswers) }
            stats.add(.remoteOffline)
            sink(worker, [SignalDelivery(conn: conn, frame: WebSocket.encode(.text, offline), received: 0, closeAfter: false, offline: true)])
        case .queryReply(let worker, let conn, let token):
            guard !noResponders, case .holds(let other, let keys)? = ClusterPayload.parse(data), other != instance, worker < pending.count else { return }
            let known = state.withLock { s -> Bool in
                guard s.networks[String(token)] != nil else { return false }
                for k in keys { s.networks[String(token)]!.remote[k] = other }
                return true
            }
            guard known else { return }
            let frames = keys.map { SignalDelivery(conn: conn, frame: WebSocket.encode(.text, SignalSession.presence($0, online: true)),
                                                   received: 0, closeAfter: false) }
            sink(worker, frames)
        case .resyncReply(let token):
            guard !noResponders, case .holds(let other, let keys)? = ClusterPayload.parse(data), other != instance else { return }
            for k in keys { presence(k, networkToken: token, online: true, at: other) }
        case .heartbeat(let other):
            guard other != instance else { return }
            // Bounded: past `maxInstances` names an unknown one is ignored (only a NATS client
            // with publish rights on the prefix could send such names).
            let isNew = state.withLock { s -> Bool in
                guard s.instances[String(other)] != nil || s.instances.count < NATSDirectory.maxInstances else { return false }
                return s.instances.updateValue(monotonicNanos(), forKey: String(other)) == nil
            }
            // An instance (re)appears: ask about what is watched here, so what it holds is
            // online again for local watchers (after a partition, neither side reconnected).
            if isNew { state.withLock { $0.resyncWanted = true } }
        }
    }

    /// A message for a peer connected here (if it still is, in that network).
    private func routed(_ message: [UInt8], to key: String, networkToken: Substring, reply: String?) {
        guard let e = hub.lookupNow(key), e.location.instance == instance, ClusterSubjects.networkToken(e.network) == networkToken else {
            if let reply { link.enqueue(.publish(subject: reply, reply: nil, payload: ClusterPayload.gone.encoded())) }
            return
        }
        stats.add(.delivered)
        sink(e.location.worker, [SignalDelivery(conn: e.location.connection, frame: WebSocket.encode(.text, message), received: 0, closeAfter: false)])
    }

    /// Another instance registered `key`: the older of the two registrations closes.
    private func claimed(_ key: String, networkToken: Substring, since: UInt64, by other: String) {
        guard let e = hub.lookupNow(key), e.location.instance == instance, ClusterSubjects.networkToken(e.network) == networkToken,
              let mine = state.withLock({ $0.since[key] }) else { return }
        if (mine, instance) > (since, other) {
            // Ours is newer: say so, and the other closes its own.
            if let subject = subjects.peer(key, network: e.network) {
                link.enqueue(.publish(subject: subject, reply: nil, payload: ClusterPayload.claim(since: mine, instance: instance).encoded()))
            }
            return
        }
        // Taken out of the directory first, so its close announces nothing: the key is online
        // at the other instance.
        guard hub.unregisterNow(key, e) else { return }
        stats.add(.replaced)
        dropLocal(key, network: e.network)
        let frame = WebSocket.encode(.text, SignalSession.error(.replaced, "a newer connection authenticated with this key"))
            + WebSocket.close(.replaced, reason: "replaced")
        sink(e.location.worker, [SignalDelivery(conn: e.location.connection, frame: frame, received: 0, closeAfter: true)])
    }

    /// Presence from another instance, to this instance's watchers of the key in that network.
    /// Only watched keys are remembered (where they are online), so the table is bounded by
    /// this instance's subscriptions, not by the size of the network.
    private func presence(_ key: String, networkToken: Substring, online: Bool, at other: String) {
        let token = String(networkToken)
        guard let name = state.withLock({ $0.networks[token]?.name }) else { return }
        let watchers = hub.watchersNow(of: key, network: name)
        guard !watchers.isEmpty else { return }
        let news = state.withLock { s -> Bool in
            guard let n = s.networks[token] else { return false }
            if online {
                // Known online there already (a re-announcement after NATS returned): said once.
                if n.remote[key] == other { return false }
                s.networks[token]!.remote[key] = other
            } else {
                // An offline from an instance the key has left is stale (it is online elsewhere).
                if let at = n.remote[key], at != other { return false }
                s.networks[token]!.remote[key] = nil
            }
            return true
        }
        guard news else { return }
        if !online, let e = hub.lookupNow(key), e.network == name { return }  // connected here now
        deliver(presence: key, online: online, to: watchers)
    }

    func announceLocally(_ key: String, network: String, online: Bool) {
        deliver(presence: key, online: online, to: hub.watchersNow(of: key, network: network))
    }

    private func deliver(presence key: String, online: Bool, to watchers: [SignalLocation]) {
        guard !watchers.isEmpty else { return }
        let frame = WebSocket.encode(.text, SignalSession.presence(key, online: online))
        var byWorker: [Int: [SignalDelivery]] = [:]
        for w in watchers { byWorker[w.worker, default: []].append(SignalDelivery(conn: w.connection, frame: frame, received: 0, closeAfter: false)) }
        for (worker, batch) in byWorker { sink(worker, batch) }
    }

    /// Which of `keys` are connected here in that network.
    private func answer(_ keys: [String], networkToken: Substring, reply: String) {
        let held = keys.filter { k in
            guard let e = hub.lookupNow(k) else { return false }
            return e.location.instance == instance && ClusterSubjects.networkToken(e.network) == networkToken
        }
        guard !held.isEmpty else { return }
        link.enqueue(.publish(subject: reply, reply: nil, payload: ClusterPayload.holds(instance: instance, keys: held).encoded()))
        stats.add(.messagesOut)
    }

    // MARK: Connection and liveness

    func connection(up: Bool, again: Bool) {
        if up { stats.add(again ? .reconnects : .connects) } else { stats.add(.disconnects) }
        guard up, again else { return }
        // Back after a loss: NATS missed what happened meanwhile. Announce every local peer
        // (watchers elsewhere that knew it online ignore the repeat) and ask again about
        // every watched key. cnats itself re-sent every subscription.
        for (key, e) in hub.localPeers(instance: instance) {
            if let p = subjects.presence(key, network: e.network) {
                link.enqueue(.publish(subject: p, reply: nil, payload: ClusterPayload.presence(online: true, instance: instance).encoded()))
            }
        }
        state.withLock { $0.resyncWanted = true }
    }

    /// Asks each network with local watchers who holds the keys watched here; answers reach
    /// every local watcher of a key not known online there yet.
    func resynchronize() {
        let networks = state.withLock { s in s.networks.compactMap { $0.value.watches > 0 ? $0.value.name : nil } }
        for network in networks { ask(about: hub.watchedKeys(network: network), network: network) }
    }

    /// The second question about keys subscribed to a tick or two ago (`State.confirm`): at
    /// least a second after the first.
    func confirmSubscriptions() {
        let pending = state.withLock { s in
            defer {
                s.confirmDue = s.confirm
                s.confirm = [:]
            }
            return s.confirmDue
        }
        for (network, keys) in pending { ask(about: Array(keys), network: network) }
    }

    private func ask(about watched: [String], network: String) {
        let keys = watched.filter { hub.lookupNow($0)?.network != network }
        var start = 0
        while start < keys.count {
            let chunk = Array(keys[start..<min(keys.count, start + ClusterPayload.maxQueryKeys)])
            start += chunk.count
            let replyTo = subjects.resyncReply(network: network)
            link.enqueue(.publish(subject: subjects.query(network: network), reply: replyTo, payload: ClusterPayload.query(chunk)))
        }
    }

    func slowConsumer() { stats.add(.droppedSlowConsumer) }

    /// Once a second on the NATS thread: our heartbeat, and instances gone silent.
    func heartbeat(now: UInt64) {
        if link.isConnected.load(ordering: .relaxed) {
            link.enqueue(.publish(subject: subjects.heartbeat, reply: nil, payload: []))
            // At most once a second, however many instances appeared or reconnections happened.
            if state.withLock({ s in defer { s.resyncWanted = false }; return s.resyncWanted }) { resynchronize() }
            confirmSubscriptions()
        }
        let gone = state.withLock { s -> [(String, String, String)] in
            let dead = s.instances.filter { now &- $0.value > NATSDirectory.instanceTimeout }.map(\.key)
            guard !dead.isEmpty else { return [] }
            for d in dead { s.instances[d] = nil }
            var out: [(String, String, String)] = []
            for (token, n) in s.networks {
                for (key, at) in n.remote where dead.contains(at) {
                    out.append((key, n.name, at))
                    s.networks[token]!.remote[key] = nil
                }
            }
            return out
        }
        for (key, network, _) in gone where hub.lookupNow(key)?.network != network {
            stats.add(.instanceLost)
            announceLocally(key, network: network, online: false)
        }
    }
}
