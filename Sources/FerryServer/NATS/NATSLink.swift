#if canImport(Glibc)
import Glibc
#endif
import CNATS
import FerryCore
import FerrySystem
import Foundation
import Logging
import Synchronization

/// How ferryd reaches NATS (`[signal.nats]`, docs/configuration.md).
struct NATSSettings: Sendable {
    var servers: [String]
    var name: String
    var user = ""
    var password = ""
    var token = ""
    var credentialsFile = ""
    var caFile = ""
    var certFile = ""
    var keyFile = ""
    /// Operations queued for the NATS thread past which publishes are dropped (`backlog`).
    var maxPending = 65536
    /// Messages one subscription may hold undelivered in cnats before it drops (slow consumer).
    var subscriptionPending = 65536
    var reconnectWaitMillis: Int64 = 250
}

/// What the link hands up, on cnats's delivery thread (messages) or its connection threads.
protocol NATSReceiver: AnyObject, Sendable {
    func received(subject: String, reply: String?, data: UnsafeRawBufferPointer, noResponders: Bool)
    /// Connected (first time, or again after a loss: `again`), or lost.
    func connection(up: Bool, again: Bool)
    func slowConsumer()
}

/// One NATS connection through Debian's cnats, owned by a thread of its own ("ferry-nats").
///
/// Why a thread: cnats's publish writes to the socket in place when its buffer fills, which can
/// block; workers never call cnats. They queue operations here (one wakeup per batch, as the
/// workers' mailboxes do) and return at once. Messages arrive on cnats's delivery thread (one
/// shared pool, not a thread per subscription) and go to the receiver, which posts to workers.
/// Subscriptions are reference-counted by subject, so a subject wanted twice is one SUB.
final class NATSLink: @unchecked Sendable {
    enum Op: Sendable {
        case publish(subject: String, reply: String?, payload: [UInt8])
        case subscribe(String)
        case unsubscribe(String)
    }

    let settings: NATSSettings
    private weak var receiver: (any NATSReceiver)?
    let loop: EventLoop
    private let queue = Mutex<[Op]>([])
    /// Publishes queued and not yet handed to cnats (bounded by `maxPending`).
    let backlog = Atomic<Int>(0)
    let isConnected = Atomic<Bool>(false)
    /// The largest payload the server takes (`max_payload`, learned at connect; 1 MiB until then).
    let maxPayload = Atomic<Int>(1 << 20)
    // NATS thread only:
    private var connection: OpaquePointer?
    private var options: OpaquePointer?
    private var subscriptions: [String: (sub: OpaquePointer, refs: Int)] = [:]

    let logger: Logger

    init(settings: NATSSettings, logger: Logger) throws(SystemError) {
        self.settings = settings
        self.logger = logger
        loop = try EventLoop(index: 0, name: "ferry-nats")
    }

    /// Logs a cnats call that failed (a file it could not load, a refused connection).
    private func check(_ status: natsStatus, _ what: String) {
        guard status != NATS_OK else { return }
        var last = NATS_OK
        let detail = nats_GetLastError(&last).map { String(cString: $0) } ?? String(cString: natsStatus_GetText(status))
        logger.error("NATS: \(what) failed; signaling reaches only this instance's peers", metadata: ["error": "\(detail)"])
    }

    func start(receiver: any NATSReceiver) {
        self.receiver = receiver
        let loop = self.loop
        let thread = Thread { loop.run() }
        thread.name = "ferry-nats"
        thread.start()
        loop.execute { [self] _ in connect() }
    }

    /// Any thread. Publishes past the backlog bound are refused (false); subscriptions always go.
    @discardableResult
    func enqueue(_ op: Op) -> Bool {
        if case .publish = op {
            guard backlog.add(1, ordering: .relaxed).newValue <= settings.maxPending else {
                backlog.subtract(1, ordering: .relaxed)
                return false
            }
        }
        let wasEmpty = queue.withLock { q in
            q.append(op)
            return q.count == 1
        }
        if wasEmpty { loop.execute { [self] _ in drain() } }
        return true
    }

    /// Sends what is queued, closes the connection and stops the NATS thread; waits for that
    /// (at most about `timeoutMillis`).
    func closeAndWait(timeoutMillis: Int64) {
        let done = DispatchSemaphore(value: 0)
        loop.execute { [self] l in
            drain()
            if let c = connection {
                if isConnected.load(ordering: .relaxed) { natsConnection_FlushTimeout(c, timeoutMillis) }
                natsConnection_Close(c)
                // Everything cnats holds goes with it (its TLS context and loaded certificates
                // among them: LeakSanitizer reports them otherwise).
                connectionForRead.store(0, ordering: .relaxed)
                natsConnection_Destroy(c)
                connection = nil
            }
            if let o = options {
                natsOptions_Destroy(o)
                options = nil
            }
            // Not nats_Close(): it tears down OpenSSL's global state, which ferryd's TLS still
            // holds and OpenSSL's own exit handler frees again (a crash at exit, seen under ASan).
            l.stop()
            done.signal()
        }
        _ = done.wait(timeout: .now() + .milliseconds(Int(timeoutMillis) + 500))
    }

    var connectedURL: String {
        // Read on any thread: cnats locks the connection itself.
        guard let c = sharedConnection else { return "" }
        var buf = [CChar](repeating: 0, count: 256)
        guard natsConnection_GetConnectedUrl(c, &buf, buf.count) == NATS_OK else { return "" }
        return buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// The connection's address, for reads from other threads (cnats locks the connection itself).
    private let connectionForRead = Atomic<Int>(0)
    private var sharedConnection: OpaquePointer? { OpaquePointer(bitPattern: connectionForRead.load(ordering: .relaxed)) }

    // MARK: The NATS thread

    private func drain() {
        let ops = queue.withLock { q in
            let taken = q
            q.removeAll(keepingCapacity: true)
            return taken
        }
        for op in ops {
            switch op {
            case .publish(let subject, let reply, let payload):
                backlog.subtract(1, ordering: .relaxed)
                guard let c = connection, isConnected.load(ordering: .relaxed) else { continue }
                _ = payload.withUnsafeBytes { p in
                    if let reply { natsConnection_PublishRequest(c, subject, reply, p.baseAddress, Int32(p.count)) }
                    else { natsConnection_Publish(c, subject, p.baseAddress, Int32(p.count)) }
                }
            case .subscribe(let subject):
                if let s = subscriptions[subject] {
                    subscriptions[subject] = (s.sub, s.refs + 1)
                } else if let c = connection {
                    var sub: OpaquePointer?
                    let closure = Unmanaged.passUnretained(self).toOpaque()
                    if natsConnection_Subscribe(&sub, c, subject, natsOnMessage, closure) == NATS_OK, let sub {
                        natsSubscription_SetPendingLimits(sub, Int32(settings.subscriptionPending), Int32(64 << 20))
                        subscriptions[subject] = (sub, 1)
                        subscriptionTotal.add(1, ordering: .relaxed)
                    }
                }
            case .unsubscribe(let subject):
                guard let s = subscriptions[subject] else { continue }
                if s.refs > 1 {
                    subscriptions[subject] = (s.sub, s.refs - 1)
                } else {
                    natsSubscription_Unsubscribe(s.sub)
                    natsSubscription_Destroy(s.sub)
                    subscriptions[subject] = nil
                    subscriptionTotal.subtract(1, ordering: .relaxed)
                }
            }
        }
    }

    /// Subjects subscribed now (the status page and tests).
    var subscriptionCount: Int { subscriptionTotal.load(ordering: .relaxed) }
    private let subscriptionTotal = Atomic<Int>(0)

    private func connect() {
        var opts: OpaquePointer?
        guard natsOptions_Create(&opts) == NATS_OK, let opts else { return }
        options = opts
        let urls = settings.servers.map { strdup($0) }
        defer { urls.forEach { free($0) } }
        var constURLs = urls.map { UnsafePointer($0) }
        natsOptions_SetServers(opts, &constURLs, Int32(constURLs.count))
        natsOptions_SetName(opts, settings.name)
        if !settings.user.isEmpty { natsOptions_SetUserInfo(opts, settings.user, settings.password) }
        if !settings.token.isEmpty { natsOptions_SetToken(opts, settings.token) }
        if !settings.credentialsFile.isEmpty {
            check(natsOptions_SetUserCredentialsFromFiles(opts, settings.credentialsFile, nil), "loading signal.nats.credentials_file")
        }
        if !settings.caFile.isEmpty || !settings.certFile.isEmpty || settings.servers.contains(where: { $0.hasPrefix("tls://") }) {
            natsOptions_SetSecure(opts, true)
            if !settings.caFile.isEmpty { check(natsOptions_LoadCATrustedCertificates(opts, settings.caFile), "loading signal.nats.ca_file") }
            if !settings.certFile.isEmpty {
                check(natsOptions_LoadCertificatesChain(opts, settings.certFile, settings.keyFile), "loading signal.nats.cert_file and key_file")
            }
        }
        // Forever, quickly: a ferryd without NATS still serves its own peers, and each moment
        // without it is a moment remote peers look unreachable.
        natsOptions_SetMaxReconnect(opts, -1)
        natsOptions_SetReconnectWait(opts, settings.reconnectWaitMillis)
        natsOptions_SetReconnectJitter(opts, 100, 250)
        natsOptions_SetTimeout(opts, 2000)
        // A server that stops answering (a dead host, a partition: no FIN arrives) is noticed
        // within about 1.5 s: pings every 500 ms, the connection dropped at two unanswered.
        natsOptions_SetPingInterval(opts, 500)
        natsOptions_SetMaxPingsOut(opts, 2)
        natsOptions_UseGlobalMessageDelivery(opts, true)
        natsOptions_SetMaxPendingMsgs(opts, Int32(settings.subscriptionPending))
        let closure = Unmanaged.passUnretained(self).toOpaque()
        natsOptions_SetRetryOnFailedConnect(opts, true, natsOnConnected, closure)
        natsOptions_SetDisconnectedCB(opts, natsOnDisconnected, closure)
        natsOptions_SetReconnectedCB(opts, natsOnReconnected, closure)
        natsOptions_SetErrorHandler(opts, natsOnError, closure)
        var nc: OpaquePointer?
        let status = natsConnection_Connect(&nc, opts)
        connection = nc
        connectionForRead.store(nc.map { Int(bitPattern: UnsafeRawPointer($0)) } ?? 0, ordering: .relaxed)
        if status == NATS_OK {
            up()
        } else if status == NATS_NOT_YET_CONNECTED {
            logger.warning("NATS not reachable yet; retrying, and signaling reaches only this instance's peers until then",
                           metadata: ["servers": "\(settings.servers)", "retry_ms": "\(settings.reconnectWaitMillis)"])
        } else {
            check(status, "connecting")
        }
    }

    fileprivate func up() {
        if let c = sharedConnection { maxPayload.store(Int(natsConnection_GetMaxPayload(c)), ordering: .relaxed) }
        isConnected.store(true, ordering: .relaxed)
        let first = !everConnectedFlag.exchange(true, ordering: .relaxed)
        logger.notice(first ? "NATS connected" : "NATS connected again", metadata: ["server": "\(connectedURL)"])
        receiver?.connection(up: true, again: !first)
    }

    fileprivate func down() {
        isConnected.store(false, ordering: .relaxed)
        logger.warning("NATS connection lost; reconnecting (messages for other instances' peers get unavailable meanwhile)")
        receiver?.connection(up: false, again: false)
    }

    private let everConnectedFlag = Atomic<Bool>(false)

    fileprivate func message(_ msg: OpaquePointer) {
        let subject = String(cString: natsMsg_GetSubject(msg))
        let reply = natsMsg_GetReply(msg).map { String(cString: $0) }
        let noResponders = natsMsg_IsNoResponders(msg)
        let data = UnsafeRawBufferPointer(start: natsMsg_GetData(msg), count: Int(natsMsg_GetDataLength(msg)))
        receiver?.received(subject: subject, reply: reply, data: data, noResponders: noResponders)
    }

    fileprivate func error(_ status: natsStatus) {
        if status == NATS_SLOW_CONSUMER { receiver?.slowConsumer() }
    }
}

// cnats's callbacks: plain C functions, the link passed as the closure.

private let natsOnMessage: natsMsgHandler = { _, _, msg, closure in
    guard let msg, let closure else { return }
    Unmanaged<NATSLink>.fromOpaque(closure).takeUnretainedValue().message(msg)
    natsMsg_Destroy(msg)
}

private let natsOnConnected: natsConnectionHandler = { _, closure in
    guard let closure else { return }
    Unmanaged<NATSLink>.fromOpaque(closure).takeUnretainedValue().up()
}

private let natsOnReconnected: natsConnectionHandler = { _, closure in
    guard let closure else { return }
    Unmanaged<NATSLink>.fromOpaque(closure).takeUnretainedValue().up()
}

private let natsOnDisconnected: natsConnectionHandler = { _, closure in
    guard let closure else { return }
    Unmanaged<NATSLink>.fromOpaque(closure).takeUnretainedValue().down()
}

private let natsOnError: natsErrHandler = { _, _, status, closure in
    guard let closure else { return }
    Unmanaged<NATSLink>.fromOpaque(closure).takeUnretainedValue().error(status)
}
