import FerryClient
import FerryCore
import FerrySignal
import FerrySystem
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The tunnel's signaling connection on a helper thread of its own: blocking connect, TLS
/// handshake and reads with short timeouts, reconnecting by `ReconnectPolicy`. With several
/// servers (instances of one network, docs/deployment.md) a lost or unreachable one is followed
/// by the next at once; the backoff applies once every server was tried. Events go to the
/// agent's loop through `deliver`; messages to send come from the loop through `post`. Signaling
/// is control traffic (a few messages per peer and path change), so a thread keeps a slow or
/// unreachable server from ever stalling the data plane.
public final class SignalConnection: Sendable {
    public enum Outgoing: Sendable {
        case route(type: String, to: String, payload: String)
        case subscribe([String])
    }

    let urls: [ServerURL]
    let privateKey: [UInt8]
    let token: String
    let caFile: String?
    let insecure: Bool
    let outbox = Mutex<[Outgoing]>([])
    let stopped = Atomic<Bool>(false)
    let log: @Sendable (String) -> Void

    public init(urls: [ServerURL], privateKey: [UInt8], token: String, caFile: String?, insecure: Bool, log: @escaping @Sendable (String) -> Void) {
        precondition(!urls.isEmpty)
        self.urls = urls
        self.privateKey = privateKey
        self.token = token
        self.caFile = caFile
        self.insecure = insecure
        self.log = log
    }

    /// Queues a message; sent on the current connection (or dropped with it: the agent
    /// re-sends what matters after the next `welcome`).
    public func post(_ m: Outgoing) { outbox.withLock { $0.append(m) } }

    public func stop() { stopped.store(true, ordering: .relaxed) }

    /// Starts the thread; `deliver` is called on that thread with every event (the agent hops
    /// to its loop).
    public func start(deliver: @escaping @Sendable (SignalClient.Event) -> Void) throws(SystemError) {
        try Threads.detach(name: "ferry-signal") { [self] in run(deliver) }
    }

    private func run(_ deliver: @Sendable (SignalClient.Event) -> Void) {
        var policy = ReconnectPolicy()
        var index = 0
        var failover = FailoverRound(servers: urls.count)
        while !stopped.load(ordering: .relaxed) {
            let began = monotonicNanos()
            let ending = session(urls[index], deliver)
            if stopped.load(ordering: .relaxed) { return }
            deliver(.ended(ending))
            let upFor = monotonicNanos() - began
            guard var delay = policy.delay(after: ending, upFor: upFor) else {
                log("signaling stopped: \(ending); not reconnecting")
                return
            }
            index = (index + 1) % urls.count
            if failover.next(upFor: upFor) { delay = min(delay, 250_000_000) }
            log("signaling ended (\(ending)); reconnecting to \(urls[index].host):\(urls[index].port) in \(delay / 1_000_000) ms")
            var left = delay
            while left > 0 && !stopped.load(ordering: .relaxed) {
                let step = min(left, 100_000_000)
                usleep(UInt32(step / 1000))
                left -= step
            }
        }
    }

    /// One connection, from connect to its end.
    private func session(_ url: ServerURL, _ deliver: @Sendable (SignalClient.Event) -> Void) -> SignalClient.Ending {
        let conn: ClientConnection
        do {
            let address = try Resolver.resolve(url.host, port: url.port)[0]
            conn = try ClientConnection(to: address, transport: url.transport, host: url.host, caFile: caFile,
                                        alpn: url.transport == .tls ? ["http/1.1"] : [], timeoutMilliseconds: 5000)
        } catch {
            return .handshake("\(error)")
        }
        if let tls = conn.tls, let failure = tls.verificationFailure, !insecure {
            return .handshake("certificate of \(url.host) not verified: \(failure)")
        }
        guard var client = SignalClient(privateKey: privateKey, token: token, host: url.host, path: url.path) else {
            return .refused(code: "bad_key")
        }
        outbox.withLock { $0.removeAll() }
        do {
            try conn.send(client.start())
            while !stopped.load(ordering: .relaxed) {
                if client.phase == .ready {
                    let pending = outbox.withLock { o -> [Outgoing] in defer { o.removeAll() }; return o }
                    for m in pending {
                        switch m {
                        case .route(let type, let to, let payload): try conn.send(client.route(type, to: to, payload: payload))
                        case .subscribe(let peers): try conn.send(client.subscribe(peers))
                        }
                    }
                }
                guard let bytes = try conn.receiveBytes(timeoutMilliseconds: 20) else { continue }
                if bytes.isEmpty {
                    if case .ended(let e)? = client.connectionLost() { return e }
                    return .closed(code: 1006)
                }
                let (events, out) = client.receive(bytes)
                if !out.isEmpty { try conn.send(out) }
                for e in events {
                    if case .ended(let ending) = e { return ending }
                    deliver(e)
                }
            }
            try? conn.send(client.close())
            return .closed(code: 1000)
        } catch {
            return .closed(code: 1006)
        }
    }
}
