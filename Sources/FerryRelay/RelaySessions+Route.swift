import FerryCore
import FerryWire

/// Why the native relay dropped a WireGuard packet (`ferry_relay_drops_total{reason}`).
public enum RelayDrop: Int, CounterReason, Error {
    /// Not a WireGuard message of a valid type and length, nor a control message.
    case malformed
    /// From an address no session end is bound at.
    case unboundSource
    /// An initiation whose mac1 names none of the sender's partners at this relay.
    case mac1Mismatch
    /// An initiation for a partner that has not bound its end yet.
    case partnerUnbound
    /// A response, cookie reply or data message whose receiver index the relay never learned
    /// from this source (or learned and forgot: expired, unbound).
    case unknownIndex
    /// Over the session's `relay.bandwidth_per_session`.
    case bandwidth
    /// The kernel refused the send (buffer full or an error).
    case sendFailed
    /// Stream side: over `relay.stream_handoff_bytes` between the relay's worker and a stream's.
    case handoffFull
    /// Stream side: for a stream end whose write queue is full (`stream.write_buffer_bytes`).
    case streamFull
    /// Stream side: for a stream end whose connection has closed.
    case streamClosed

    public var label: String {
        switch self {
        case .malformed: return "malformed"
        case .unboundSource: return "unbound_source"
        case .mac1Mismatch: return "mac1_mismatch"
        case .partnerUnbound: return "partner_unbound"
        case .unknownIndex: return "unknown_index"
        case .bandwidth: return "bandwidth"
        case .sendFailed: return "send_failed"
        case .handoffFull: return "handoff_full"
        case .streamFull: return "stream_full"
        case .streamClosed: return "stream_closed"
        }
    }
}

extension RelaySessions {
    public enum Route: Equatable, Sendable {
        case forward(SocketAddress)
        case drop(RelayDrop)
    }

    /// Where the WireGuard message at `p` from `source` goes. An initiation goes to the partner
    /// its mac1 names among those bound with `source`; everything else by its receiver index,
    /// learned from the handshake this relay forwarded. Only between the two bound ends of one
    /// session, and within the session's bandwidth.
    public mutating func route(_ p: UnsafeRawPointer, length n: Int, kind: WireGuardMessage.Kind,
                               from source: SocketAddress, now: UInt64) -> Route {
        let seconds = UInt32(truncatingIfNeeded: now / 1_000_000_000)
        let slot: UInt32, toEnd: Int
        switch kind {
        case .initiation:
            switch initiationTarget(p, from: source) {
            case .failure(let drop): return .drop(drop)
            case .success(let r): (slot, toEnd) = (r >> 1, Int(r & 1))
            }
            // The responder's packets will carry the initiator's sender index back.
            learn(slot, from: toEnd, index: WireGuardMessage.senderIndex(p), now: seconds)
        case .response, .cookieReply, .transportData:
            let index = WireGuardMessage.receiverIndex(p, kind)
            guard let dest = byIndex[IndexKey(index: index, source: source)] ?? soleSession(of: source, kind: kind, index: index, now: seconds) else {
                return .drop(.unknownIndex)
            }
            (slot, toEnd) = (dest >> 1, Int(dest & 1))
            let s = slots[Int(slot)]
            guard s.live, s.active, s[1 - toEnd].address == source else { return .drop(.unknownIndex) }
            if kind == .response {
                // A response's mac1 is made for the initiator's key: the end it goes to.
                let key = WireGuardMessage.mac1Key(publicKey: s[toEnd].key.bytes)
                guard key.withUnsafeBytes({ WireGuardMessage.mac1Matches(p, .response, mac1Key: $0) }) else { return .drop(.mac1Mismatch) }
                // And the initiator's packets will carry the responder's.
                learn(slot, from: toEnd, index: WireGuardMessage.senderIndex(p), now: seconds)
            }
        }
        if limits.bandwidth > 0 {
            guard slots[Int(slot)].bucket.take(Double(n), rate: limits.bandwidth, capacity: limits.burst, now: now) else {
                return .drop(.bandwidth)
            }
        }
        slots[Int(slot)].packets &+= 1
        slots[Int(slot)].bytes &+= UInt64(n)
        slots[Int(slot)][1 - toEnd].lastSeen = seconds
        return .forward(slots[Int(slot)][toEnd].address)
    }

    /// Data under an index the relay never saw a handshake for (it restarted, or forgot): when
    /// `source` is bound in exactly one session and that session forwards, there is only one
    /// place the packet can go, so the index is learned from it. WireGuard keeps using its
    /// keypair for up to two minutes and only handshakes again when it hears nothing for 15 s;
    /// without this a restarted relay would carry nothing for that long. With several sessions at
    /// one address the packet waits for WireGuard's next handshake (dropped as `unknown_index`).
    private mutating func soleSession(of source: SocketAddress, kind: WireGuardMessage.Kind, index: UInt32, now: UInt32) -> UInt32? {
        guard kind == .transportData, let r = byAddress[source] else { return nil }
        let slot = r >> 1, end = Int(r & 1)
        guard slots[Int(slot)][end].next == RelaySessions.none, slots[Int(slot)].active else { return nil }
        learn(slot, from: end, index: index, now: now)
        return RelaySessions.ref(slot, 1 - end)
    }

    /// The end an initiation from `source` is for: the partner, among every session end bound
    /// at `source`, whose mac1 key verifies it.
    private func initiationTarget(_ p: UnsafeRawPointer, from source: SocketAddress) -> Result<UInt32, RelayDrop> {
        guard var r = byAddress[source] else { return .failure(.unboundSource) }
        while r != RelaySessions.none {
            let s = slots[Int(r >> 1)]
            let end = Int(r & 1)
            let partner = s[1 - end]
            let key = WireGuardMessage.mac1Key(publicKey: partner.key.bytes)
            if key.withUnsafeBytes({ WireGuardMessage.mac1Matches(p, .initiation, mac1Key: $0) }) {
                return partner.bound ? .success(RelaySessions.ref(r >> 1, 1 - end)) : .failure(.partnerUnbound)
            }
            r = s[end].next
        }
        return .failure(.mac1Mismatch)
    }

    /// Packets from `carrier` will carry `index` as their receiver index (it leads to the other
    /// end). Each direction keeps its last `ringSize` indices; the oldest goes.
    mutating func learn(_ slot: UInt32, from carrier: Int, index: UInt32, now: UInt32) {
        var e = slots[Int(slot)][carrier]
        let dest = RelaySessions.ref(slot, 1 - carrier)
        if mirrorsFastPath && (!e.carried.contains(index) || byIndex[IndexKey(index: index, source: e.address)] != dest) { markFastPath(slot) }
        e.learned = now
        if !e.carried.contains(index) {
            if Int(e.carried.count) == RelaySessions.ringSize {
                removeIndex(IndexKey(index: e.carried[Int(e.carried.next)], source: e.address), ifLeadingTo: dest)
            } else {
                e.carried.count += 1
            }
            e.carried[Int(e.carried.next)] = index
            e.carried.next = (e.carried.next + 1) % UInt8(RelaySessions.ringSize)
        }
        slots[Int(slot)][carrier] = e
        byIndex[IndexKey(index: index, source: e.address)] = dest
    }

    /// Forgets the indices packets from `end` carry.
    mutating func forgetIndices(_ slot: UInt32, _ end: Int) {
        let e = slots[Int(slot)][end]
        if e.carried.count > 0 { markFastPath(slot) }
        let dest = RelaySessions.ref(slot, 1 - end)
        for i in 0..<Int(e.carried.count) { removeIndex(IndexKey(index: e.carried[i], source: e.address), ifLeadingTo: dest) }
        slots[Int(slot)][end].carried = IndexRing()
    }

    /// Removes an entry unless another session took the key over since (a random collision:
    /// the newest learned wins, and the loser's bookkeeping must not remove it).
    private mutating func removeIndex(_ k: IndexKey, ifLeadingTo dest: UInt32) {
        if byIndex[k] == dest { byIndex[k] = nil }
    }
}
