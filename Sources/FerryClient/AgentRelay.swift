import FerryCore
import FerryWire

/// `ferry tunnel`'s TURN relay: the one allocation every link of the agent shares. It owns which
/// TURN server is used (`RelaySelection`: measured, then UDP, TCP, TLS), over what transport, the
/// allocation (`TURNClient`), the channels bound on it both ways, and the candidates it gives
/// ICE (relayed, and over UDP the server-reflexive address the allocation reports).
///
/// Pure: the caller carries out `Action`s (sends from its ICE socket or on the stream it holds,
/// connects TCP or TLS on a helper thread, closes the stream) and reports back (`connected`,
/// `connectFailed`, `receive`); the clock is handed in and names resolve through the injected
/// `resolve`. The packet path reads `channel(for:)` and `peer(forChannel:)`: one dictionary
/// lookup each, kept beside `TURNClient`'s own table so no copy of the client is made per packet.
public struct AgentRelay {
    public enum Transport: Equatable, Sendable {
        case none
        case udp(SocketAddress)
        /// TCP or TLS to this server; the caller holds the connection.
        case stream(tls: Bool, server: SocketAddress)
    }

    public enum Action: Equatable, Sendable {
        /// A STUN Binding from the ICE socket, measuring a relay host's round trip.
        case measure(TransactionID, SocketAddress)
        /// TURN bytes to the server over the current transport (framed as the transport needs).
        case send([UInt8])
        /// Connect TCP or TLS for this URL off the loop; report `connected` or `connectFailed`
        /// with this attempt (a late report for an older attempt is ignored).
        case connect(ServerURL, attempt: Int)
        /// Close the stream the caller holds: the relay no longer uses it.
        case closeStream
        /// The relay's part of gathering is over: allocated (`candidate` set) or none reachable.
        case gathered
        /// The allocation is gone (its refresh failed, or its stream closed): gather again.
        case regather
        case log(String)
    }

    public let icePort: UInt16
    let resolve: (ServerURL) -> SocketAddress?

    public private(set) var transport = Transport.none
    public private(set) var client: TURNClient?
    /// The relayed candidate (with an undisclosed base) and, over UDP, the ICE socket's mapping.
    public private(set) var candidate: ICECandidate?
    public private(set) var reflexive: ICECandidate?
    public private(set) var urls: [ServerURL] = []
    private var credentials: [String: TURNClient.Credentials] = [:]
    public private(set) var selection = RelaySelection()
    /// Counts attempts: a connection that finishes after the relay moved on is dropped.
    public private(set) var attempt = 0
    private var channelPeers: [UInt16: SocketAddress] = [:]
    private var peerChannels: [SocketAddress: UInt16] = [:]

    public init(icePort: UInt16, resolve: @escaping (ServerURL) -> SocketAddress?) {
        self.icePort = icePort
        self.resolve = resolve
    }

    public var isAllocated: Bool { client?.phase == .allocated }
    public var isRanking: Bool { selection.isRanking }
    public var isStream: Bool { if case .stream = transport { true } else { false } }
    public var udpServer: SocketAddress? { if case .udp(let s) = transport { s } else { nil } }

    /// How the relay is reached, for logs and `ferry tunnel status`.
    public var transportDescription: String {
        switch transport {
        case .none: "none"
        case .udp(let s): "udp \(s)"
        case .stream(let tls, let s): "\(tls ? "tls" : "tcp") \(s)"
        }
    }

    // MARK: Channels (the packet path)

    public func channel(for peer: SocketAddress) -> UInt16? { peerChannels[peer] }
    public func peer(forChannel number: UInt16) -> SocketAddress? { channelPeers[number] }

    // MARK: Gathering

    /// The TURN URLs of a signaling welcome, each with its relay's credentials.
    public mutating func configure(_ relays: [SignalClient.Relay]) {
        urls = []
        credentials = [:]
        for r in relays {
            for u in r.urls {
                guard let s = ServerURL(u), s.kind == .turn else { continue }
                urls.append(s)
                credentials[s.text] = .init(username: r.username, password: r.credential)
            }
        }
    }

    /// Starts over: whatever was allocated is dropped, the URLs are measured and tried in order.
    public mutating func start(now: UInt64) -> [Action] {
        candidate = nil
        reflexive = nil
        var out = close()
        attempt &+= 1  // a connection still being made for the last gathering is dropped
        let resolve = self.resolve
        out += perform(selection.start(urls, now: now) { resolve($0) }, now: now)
        return out
    }

    /// A STUN answer on the ICE socket while relays are measured: true when it was one.
    public mutating func rankingAnswer(_ m: STUNMessage, from: SocketAddress, now: UInt64) -> Bool {
        selection.isRanking && selection.answer(m, from: from, now: now)
    }

    /// Retransmissions, refreshes, the ranking window and the attempt's deadline.
    public mutating func tick(now: UInt64) -> [Action] {
        var out: [Action] = []
        if var t = client {
            let (events, sends) = t.tick(now: now)
            client = t
            out += sends.map(Action.send)
            out += handle(events, now: now)
        }
        let ranking = selection.isRanking
        let next = selection.tick(now: now)
        guard !next.isEmpty else { return out }
        if ranking {
            let measured = selection.roundTrips.sorted { $0.value < $1.value }.map { "\($0.key) \(Double($0.value / 10_000) / 100) ms" }
            out.append(.log("relays by round trip: \(measured.isEmpty ? "none answered" : measured.joined(separator: ", "))"))
        } else {
            out.append(.log("relay: no answer over \(transportDescription) within \(RelaySelection.attemptTimeout / 1_000_000_000) s"))
            out += close()
        }
        return out + perform(next, now: now)
    }

    /// The stream for `attempt` is connected (TLS verified where it must be).
    public mutating func connected(attempt: Int, tls: Bool, server: SocketAddress, now: UInt64) -> [Action]? {
        guard attempt == self.attempt, let u = selection.current, let creds = credentials[u.text] else { return nil }
        transport = .stream(tls: tls, server: server)
        selection.connected(now: now)
        var t = TURNClient(credentials: creds, reliable: true, software: "ferry-tunnel")
        let request = t.allocate(now: now)
        client = t
        return [.send(request)]
    }

    /// The stream for `attempt` could not be made (or registered): the next URL.
    public mutating func connectFailed(attempt: Int, url: ServerURL, reason: String, now: UInt64) -> [Action] {
        guard attempt == self.attempt else { return [] }
        return [.log("relay: \(url): \(reason)")] + perform([selection.failed(now: now)], now: now)
    }

    /// A TURN answer from the server (a datagram, or a frame of the stream).
    public mutating func receive(_ m: STUNMessage, now: UInt64) -> [Action] {
        guard var t = client else { return [] }
        let (events, sends) = t.receive(m, now: now)
        client = t
        return sends.map(Action.send) + handle(events, now: now)
    }

    /// Drops the transport and the allocation (the caller closes a stream).
    public mutating func close() -> [Action] {
        let out: [Action] = isStream ? [.closeStream] : []
        transport = .none
        client = nil
        channelPeers = [:]
        peerChannels = [:]
        return out
    }

    // MARK: What ICE and the links ask of the allocation

    /// Permissions for a peer's addresses, one request per address: the server refuses a request
    /// whole when its policy forbids one of them (a remote's private host candidate, say).
    public mutating func permit(_ ips: [IPAddress], now: UInt64) -> [Action] {
        guard var t = client, t.phase == .allocated else { return [] }
        var out: [Action] = []
        var seen: Set<IPAddress> = []
        for ip in ips where ip.isIPv4 && seen.insert(ip).inserted { out.append(.send(t.permit([ip], now: now))) }
        client = t
        return out
    }

    /// A channel to `peer`, once ICE selected a relayed path to it.
    public mutating func bindChannel(to peer: SocketAddress, now: UInt64) -> [Action] {
        guard var t = client, t.phase == .allocated, t.channel(for: peer) == nil else { return [] }
        let request = t.bindChannel(to: peer, now: now).request
        client = t
        return [.send(request)]
    }

    /// `data` to `peer` through the allocation: ChannelData on its channel (padded to 4 bytes on
    /// a stream, RFC 8656 §12.5), else a Send indication; nil before the allocation.
    public func frame(_ data: [UInt8], to peer: SocketAddress) -> [UInt8]? {
        guard let t = client, t.phase == .allocated else { return nil }
        guard let n = peerChannels[peer] else { return t.sendIndication(to: peer, data: data) }
        let padded = isStream ? (data.count + 3) & ~3 : data.count
        var frame = [UInt8](repeating: 0, count: ChannelData.headerLength + padded)
        frame.withUnsafeMutableBytes { ChannelData.writeHeader(channel: n, length: data.count, at: $0.baseAddress!) }
        frame.replaceSubrange(ChannelData.headerLength..<(ChannelData.headerLength + data.count), with: data)
        return frame
    }

    // MARK: Inside

    private mutating func perform(_ actions: [RelaySelection.Action], now: UInt64) -> [Action] {
        var out: [Action] = []
        for a in actions {
            switch a {
            case .measure(let tid, let address):
                out.append(.measure(tid, address))
            case .attempt(let u):
                out += attemptRelay(u, now: now)
            case .exhausted:
                out.append(.log("relay: no TURN server reachable (\(selection.urls.count) tried); direct paths only"))
                out.append(.gathered)
            }
        }
        return out
    }

    private mutating func attemptRelay(_ u: ServerURL, now: UInt64) -> [Action] {
        attempt &+= 1
        guard let creds = credentials[u.text] else { return perform([selection.failed(now: now)], now: now) }
        guard u.transport == .udp else { return [.connect(u, attempt: attempt)] }
        guard let address = resolve(u) else {
            return [.log("relay: \(u): cannot resolve \(u.host)")] + perform([selection.failed(now: now)], now: now)
        }
        transport = .udp(address)
        var t = TURNClient(credentials: creds, reliable: false, software: "ferry-tunnel")
        let request = t.allocate(now: now)
        client = t
        return [.send(request)]
    }

    private mutating func handle(_ events: [TURNClient.Event], now: UInt64) -> [Action] {
        var out: [Action] = []
        for e in events {
            switch e {
            case .allocated(let relayed, let mapped, let lifetime):
                out.append(.log("relay: allocated \(relayed) over \(transportDescription) (lifetime \(lifetime) s)"))
                selection.allocated()
                // raddr 0.0.0.0 rport 0: the mapped address is the host's own where there is no
                // NAT, and a relay candidate must not reveal it (--relay-only promises as much).
                candidate = ICECandidate(kind: .relay, address: relayed, base: ICECandidate.undisclosed, localPreference: 65535)
                if case .udp = transport, let mapped { reflexive = ICECandidate(kind: .srflx, address: mapped, base: SocketAddress(ip: .ipv4Any, port: icePort)) }
                out.append(.gathered)
            case .failed(let request, let code, let reason):
                if request == .allocate {
                    out.append(.log("relay: allocate over \(transportDescription) failed: \(code == 0 ? reason : "\(code) \(reason)")"))
                    out += close()
                    out += perform([selection.failed(now: now)], now: now)
                } else if case .refresh = request {
                    out.append(.log("relay: refresh failed (\(code) \(reason)); gathering again"))
                    out.append(.regather)
                }
            case .channelBound(let number, let peer):
                channelPeers[number] = peer
                peerChannels[peer] = number
                out.append(.log("relay: channel 0x\(String(number, radix: 16)) bound to \(peer)"))
            default:
                break
            }
        }
        return out
    }
}
