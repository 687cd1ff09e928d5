import FerryCore
import FerryWire

extension TURNServer {
    // MARK: Allocate (RFC 8656 §7.2)

    func allocate(_ ctx: Context) -> Action {
        let msg = ctx.msg
        let key = ctx.clientKey
        // 1. "The server checks if the 5-tuple is currently in use by an existing allocation. If
        // yes, the server rejects the request with a 437 (Allocation Mismatch) error." A
        // retransmission of the Allocate that made it gets the same success again.
        if let slot = table.pointee.byClient[key] {
            let a = table.pointee.allocations[Int(slot)]
            if a.allocateTransaction == msg.transactionID && a.username == ctx.username {
                return allocateSuccess(ctx, slot: slot, reservation: nil, familyError: false)
            }
            return error(ctx, 437)
        }
        // 2. "The server checks if the request contains a REQUESTED-TRANSPORT attribute. If the
        // REQUESTED-TRANSPORT attribute is not included or is malformed, the server rejects the
        // request with a 400 (Bad Request) error. Otherwise, if the attribute indicates UDP
        // transport, the server continues with the procedures of this section. If the attribute
        // specifies any value other than UDP, the server rejects the request with a 442."
        guard let transport = msg.attribute(STUN.Attribute.requestedTransport), transport.count == 4 else {
            return error(ctx, 400, reason: "Missing REQUESTED-TRANSPORT")
        }
        guard transport[0] == 17 else { return error(ctx, 442) }
        // 3. DONT-FRAGMENT is supported (the relayed socket sets DF).
        let dontFragment = msg.has(STUN.Attribute.dontFragment)
        // 4. "The server checks if the request contains a RESERVATION-TOKEN attribute. If yes, and
        // the request also contains an EVEN-PORT or REQUESTED-ADDRESS-FAMILY or
        // ADDITIONAL-ADDRESS-FAMILY attribute, the server rejects the request with a 400."
        let tokenAttr = msg.attribute(STUN.Attribute.reservationToken)
        let evenPort = msg.attribute(STUN.Attribute.evenPort)
        let requestedFamily = msg.attribute(STUN.Attribute.requestedAddressFamily)
        let additionalFamily = msg.attribute(STUN.Attribute.additionalAddressFamily)
        if tokenAttr != nil && (evenPort != nil || requestedFamily != nil || additionalFamily != nil) {
            return error(ctx, 400, reason: "RESERVATION-TOKEN with EVEN-PORT or an address family")
        }
        if let t = tokenAttr, t.count != 8 { return error(ctx, 400, reason: "Malformed RESERVATION-TOKEN") }
        if let e = evenPort, e.count != 1 { return error(ctx, 400, reason: "Malformed EVEN-PORT") }
        // Address families (RFC 8656 §7.2 step 5 and 6): REQUESTED-ADDRESS-FAMILY picks one;
        // ADDITIONAL-ADDRESS-FAMILY (IPv6 only) asks for IPv4 and IPv6 both; not both at once.
        if requestedFamily != nil && additionalFamily != nil {
            return error(ctx, 400, reason: "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together")
        }
        var families: [IPFamily] = [.ipv4]
        if let f = requestedFamily {
            guard f.count == 4, let fam = IPFamily(rawValue: f[0]) else { return error(ctx, 440) }
            families = [fam]
        }
        if let f = additionalFamily {
            guard f.count == 4, f[0] == IPFamily.ipv6.rawValue else { return error(ctx, 400, reason: "ADDITIONAL-ADDRESS-FAMILY must be IPv6") }
            families = [.ipv4, .ipv6]
        }
        let primary = families[0]
        guard bindIP(primary) != nil || tokenAttr != nil else { return error(ctx, 440) }
        // Quotas: per user (486) and this worker's capacity (508).
        guard shared.reserveUserSlot(ctx.username, limit: settings.maxAllocationsPerUser) else {
            metrics.add(counters.drops[.quota])
            return error(ctx, 486)
        }
        guard let slot = table.pointee.take(key) else {
            shared.releaseUserSlot(ctx.username)
            metrics.add(counters.drops[.quota])
            return error(ctx, 508)
        }
        let generation = table.pointee.allocations[Int(slot)].generation
        var reservationToken: UInt64?
        var familyError = false
        func fail(_ code: Int) -> Action {
            closeRelays(slot)
            table.pointee.remove(slot)
            shared.releaseUserSlot(ctx.username)
            return error(ctx, code)
        }
        if let t = tokenAttr {
            // 6. "If the request contains a RESERVATION-TOKEN, the server uses the previously
            // reserved transport address ... If the token is not valid, 508."
            let token = t.u64(0)
            guard let r = shared.takeReservation(token) else { return fail(508) }
            guard let relay = relays.adopt(r.socket, slot: slot, generation: generation) else { return fail(508) }
            setRelay(slot, family: r.family, relay: relay, port: r.port)
        } else {
            for (i, family) in families.enumerated() {
                guard let ip = bindIP(family) else {
                    // A dual allocation whose second family is not served: the first stands and
                    // ADDRESS-ERROR-CODE says why (RFC 8656 §7.2).
                    if i > 0 { familyError = true; continue }
                    return fail(440)
                }
                let even = i == 0 && evenPort != nil
                guard let opened = relays.openRelay(ip: ip, evenPort: even, slot: slot, generation: generation) else {
                    if i > 0 { familyError = true; continue }
                    return fail(508)
                }
                setRelay(slot, family: family, relay: opened.relay, port: opened.port)
                // EVEN-PORT with the R bit: also hold port+1 and hand out a token for it.
                if even, let e = evenPort, e[0] & 0x80 != 0 {
                    guard opened.port < 65535, let reserved = relays.openReserved(ip: ip, port: opened.port + 1) else {
                        return fail(508)
                    }
                    var g = SystemRandomNumberGenerator()
                    let token: UInt64 = g.next()
                    shared.addReservation(token, .init(socket: reserved, port: opened.port + 1, family: family,
                                                       expiry: ctx.now + 30_000_000_000))
                    reservationToken = token
                }
            }
        }
        let a = table.pointee.allocations[Int(slot)]
        if dontFragment {
            if !a.relay4.isNone { relays.setDontFragment(a.relay4) }
            if !a.relay6.isNone { relays.setDontFragment(a.relay6) }
        }
        let lifetime = grantedLifetime(msg, allowZero: false)
        table.pointee.allocations[Int(slot)].expiry = ctx.now + UInt64(lifetime) * 1_000_000_000
        table.pointee.allocations[Int(slot)].username = ctx.username
        table.pointee.allocations[Int(slot)].created = ctx.now
        table.pointee.allocations[Int(slot)].createdWall = ctx.wallNow
        table.pointee.allocations[Int(slot)].key = ctx.key
        table.pointee.allocations[Int(slot)].allocateTransaction = msg.transactionID
        table.pointee.allocations[Int(slot)].bandwidth = TokenBucket(capacity: Double(burstBytes), now: ctx.now)
        metrics.add(counters.allocationsCreated)
        metrics.set(counters.allocationsActive, UInt64(table.pointee.activeCount))
        return allocateSuccess(ctx, slot: slot, reservation: reservationToken, familyError: familyError)
    }

    func allocateSuccess(_ ctx: Context, slot: Int32, reservation: UInt64?, familyError: Bool) -> Action {
        let a = table.pointee.allocations[Int(slot)]
        let remaining = UInt32((a.expiry > ctx.now ? a.expiry - ctx.now : 0) / 1_000_000_000)
        return success(ctx) { w in
            if !a.relay4.isNone { w.append(STUN.Attribute.xorRelayedAddress, xorAddress: a.relayAddress4) }
            if !a.relay6.isNone { w.append(STUN.Attribute.xorRelayedAddress, xorAddress: a.relayAddress6) }
            if familyError {
                // ADDRESS-ERROR-CODE (RFC 8656 §18.10): family, then an ERROR-CODE body.
                let reason = Array("Address Family not Supported".utf8)
                w.append(STUN.Attribute.addressErrorCode, length: 4 + reason.count) { p in
                    p.storeBytes(of: IPFamily.ipv6.rawValue, as: UInt8.self)
                    p.storeBytes(of: UInt8(0), toByteOffset: 1, as: UInt8.self)
                    p.storeBytes(of: UInt8(4), toByteOffset: 2, as: UInt8.self)
                    p.storeBytes(of: UInt8(40), toByteOffset: 3, as: UInt8.self)
                    reason.withUnsafeBytes { (p + 4).copyMemory(from: $0.baseAddress!, byteCount: reason.count) }
                }
            }
            w.append(STUN.Attribute.lifetime, uint32: remaining)
            if let token = reservation {
                w.append(STUN.Attribute.reservationToken, length: 8) { $0.storeBytes(of: token.bigEndian, as: UInt64.self) }
            }
            w.append(STUN.Attribute.xorMappedAddress, xorAddress: ctx.client)
        }
    }

    func bindIP(_ family: IPFamily) -> IPAddress? {
        family == .ipv4 ? settings.relayIPv4 : settings.relayIPv6
    }

    /// The allocation holds `relay` on `port`: from now on a peer of this ferryd may reach it.
    func setRelay(_ slot: Int32, family: IPFamily, relay: RelayID, port: UInt16) {
        relayPorts.insert(family, port: port)
        if family == .ipv4 {
            let ip = settings.externalIPv4 ?? settings.relayIPv4 ?? .ipv4Any
            table.pointee.allocations[Int(slot)].relay4 = relay
            table.pointee.allocations[Int(slot)].relayAddress4 = SocketAddress(ip: ip, port: port)
        } else {
            let ip = settings.externalIPv6 ?? settings.relayIPv6 ?? .ipv6Any
            table.pointee.allocations[Int(slot)].relay6 = relay
            table.pointee.allocations[Int(slot)].relayAddress6 = SocketAddress(ip: ip, port: port)
        }
    }

    /// The ports stop being reachable before their sockets close (after which the kernel may give
    /// them to any process).
    func closeRelays(_ slot: Int32) {
        let a = table.pointee.allocations[Int(slot)]
        if !a.relay4.isNone {
            relayPorts.remove(.ipv4, port: a.relayAddress4.port)
            relays.closeRelay(a.relay4)
        }
        if !a.relay6.isNone {
            relayPorts.remove(.ipv6, port: a.relayAddress6.port)
            relays.closeRelay(a.relay6)
        }
        table.pointee.allocations[Int(slot)].relay4 = .none
        table.pointee.allocations[Int(slot)].relay6 = .none
    }

    var burstBytes: UInt64 {
        settings.bandwidthBurst > 0 ? settings.bandwidthBurst : settings.bandwidthPerAllocation
    }

    /// RFC 8656 §7.2 / §7.5: min(requested, maximum), but not less than the default; 0 only
    /// where a Refresh may delete.
    func grantedLifetime(_ msg: STUNMessage, allowZero: Bool) -> UInt32 {
        guard let requested = msg.uint32(STUN.Attribute.lifetime) else { return settings.defaultLifetime }
        if requested == 0 && allowZero { return 0 }
        let capped = min(requested, settings.maxLifetime)
        return capped > settings.defaultLifetime ? capped : settings.defaultLifetime
    }

    /// The allocation a request may act on: 437 without one, 441 with other credentials.
    enum Owned {
        case slot(Int32)
        case answered(Action)
    }

    func ownAllocation(_ ctx: Context) -> Owned {
        guard let slot = table.pointee.byClient[ctx.clientKey] else {
            return .answered(error(ctx, 437))
        }
        // RFC 8656 §5: "the request MUST be authenticated with the same username and password
        // as the Allocate" — else 441 (Wrong Credentials).
        if table.pointee.allocations[Int(slot)].username != ctx.username {
            metrics.add(counters.authFailures[.wrongCredentials])
            return .answered(error(ctx, 441))
        }
        return .slot(slot)
    }
}
