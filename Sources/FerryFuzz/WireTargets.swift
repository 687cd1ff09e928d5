import FerrySystem
import FerryWire

/// The pure codecs of FerryWire: what every datagram and stream byte meets first.
enum WireTargets {
    /// Every STUN attribute type the server reads, plus unknown ones on both sides of 0x8000.
    static let attributeTypes: [UInt16] = [
        STUN.Attribute.mappedAddress, STUN.Attribute.username, STUN.Attribute.messageIntegrity, STUN.Attribute.errorCode,
        STUN.Attribute.unknownAttributes, STUN.Attribute.channelNumber, STUN.Attribute.lifetime, STUN.Attribute.xorPeerAddress,
        STUN.Attribute.data, STUN.Attribute.realm, STUN.Attribute.nonce, STUN.Attribute.xorRelayedAddress,
        STUN.Attribute.requestedAddressFamily, STUN.Attribute.evenPort, STUN.Attribute.requestedTransport,
        STUN.Attribute.dontFragment, STUN.Attribute.messageIntegritySHA256, STUN.Attribute.passwordAlgorithm,
        STUN.Attribute.userHash, STUN.Attribute.xorMappedAddress, STUN.Attribute.reservationToken,
        STUN.Attribute.additionalAddressFamily, STUN.Attribute.software, STUN.Attribute.fingerprint, 0x7FFF, 0xC001,
    ]
    static let key: [UInt8] = Array("fuzz-key".utf8)

    /// A datagram (exact) and a stream read (trailing bytes allowed) through the STUN view.
    static func stun(_ b: UnsafeRawBufferPointer) {
        for exact in [true, false] {
            guard case .success(let m) = STUNMessage.parse(b, exact: exact) else { continue }
            require(m.bytes.count == STUN.headerLength + Int(b.u16(2)), "the view covers exactly the announced length")
            require(!exact || m.bytes.count == b.count, "an exact parse takes the whole datagram")
            for t in attributeTypes {
                if let v = m.attribute(t) {
                    require(v.baseAddress! >= m.bytes.baseAddress! && v.baseAddress! + v.count <= m.bytes.baseAddress! + m.bytes.count,
                            "attribute \(t) lies inside the message")
                }
                _ = m.string(t)
                _ = m.uint32(t)
                _ = m.xorAddress(t)
                _ = m.allXORAddresses(t)
            }
            _ = m.unknownComprehensionRequired()
            _ = m.errorCode()
            key.withUnsafeBytes {
                _ = m.verifyIntegrity(key: $0)
                _ = m.verifyIntegritySHA256(key: $0)
            }
        }
        _ = STUNMessage.framedLength(b)
        _ = ChannelData.parse(b)
    }

    /// A TCP/TLS byte stream cut into frames as a stream connection does: every decision must
    /// stay inside the buffer and must not change when more bytes arrive.
    static func framing(_ b: UnsafeRawBufferPointer) {
        guard let first = b.first else { return }
        let maxFrame = 64 + Int(first) * 257  // also small limits
        var offset = 1
        while offset < b.count {
            let rest = UnsafeRawBufferPointer(rebasing: b[offset...])
            let next = StreamFraming.next(rest, maxFrame: maxFrame)
            // The same bytes seen one at a time never decide differently than seen at once.
            for cut in [0, 1, 3, 4, 8, 19, 20, rest.count - 1] where cut >= 0 && cut < rest.count {
                let early = StreamFraming.next(UnsafeRawBufferPointer(rebasing: rest[..<cut]), maxFrame: maxFrame)
                require(early == .incomplete || early == next, "a prefix of \(cut) bytes decided \(early), the whole \(next)")
            }
            switch next {
            case .incomplete, .invalid:
                return
            case .stun(let length):
                require(length >= STUN.headerLength && length <= rest.count && length <= maxFrame, "STUN frame within bounds")
                _ = STUNMessage.parse(UnsafeRawBufferPointer(rebasing: rest[..<length]), exact: true)
                offset += length
            case .channelData(let channel, let payload, let frame):
                require(frame >= 4 + payload && frame <= rest.count && frame <= maxFrame && frame % 4 == 0,
                        "ChannelData frame within bounds")
                require(channel >= 0x4000 && channel <= 0x7FFF, "a ChannelData frame has a channel number")
                let parsed = ChannelData.parse(UnsafeRawBufferPointer(rebasing: rest[..<(4 + payload)]))
                require(parsed == nil || parsed!.length == payload, "ChannelData.parse agrees with the framer")
                offset += frame
            }
        }
    }

    /// The shared port's sniffer: undecided until it can tell, then never changing its mind.
    static func sniffer(_ b: UnsafeRawBufferPointer) {
        let whole = ProtocolSniffer.sniff(b)
        require(whole != nil || b.count < 8, "8 bytes are always enough to decide")
        for cut in 0..<min(b.count, 24) {
            if let early = ProtocolSniffer.sniff(UnsafeRawBufferPointer(rebasing: b[..<cut])) {
                require(early == whole, "sniffing \(cut) bytes said \(early), the whole \(String(describing: whole))")
            }
        }
        if whole == .stun { require(STUNMessage.looksLikeSTUN(b) || b.count < STUN.headerLength, "what sniffs as STUN looks like STUN") }
    }

    /// Request heads with small and default limits, then the WebSocket upgrade of any head that
    /// parses; what is left after a head is parsed again (pipelining).
    static func httpHead(_ b: UnsafeRawBufferPointer) {
        guard let first = b.first else { return }
        let limits = first & 1 == 0 ? HTTPHeadParser.Limits() : HTTPHeadParser.Limits(maxHeadBytes: 64 + Int(first), maxHeaders: Int(first >> 4))
        var offset = 1
        var heads = 0
        while offset < b.count && heads < 8 {
            let rest = UnsafeRawBufferPointer(rebasing: b[offset...])
            switch HTTPHeadParser.parse(rest, limits: limits) {
            case .incomplete:
                require(rest.count < limits.maxHeadBytes || rest.count <= 3, "a head over the limit is refused, not awaited")
                return
            case .failure(let f):
                require([400, 431, 505].contains(f.status), "failures map to 400, 431 or 505")
                return
            case .complete(let head, let consumed):
                require(consumed >= 4 && consumed <= rest.count && consumed <= limits.maxHeadBytes + 4, "a head fits its buffer and limit")
                require(head.headers.count <= limits.maxHeaders, "no more fields than allowed")
                _ = head.path
                _ = head.keepAlive
                switch WebSocket.accept(head) {
                case .success(let answer):
                    require(answer.starts(with: Array("HTTP/1.1 101 ".utf8)), "an accepted upgrade answers 101")
                case .failure(let f):
                    require([400, 405, 426].contains(f.status), "a refused upgrade answers 400, 405 or 426")
                }
                offset += consumed
                heads += 1
            }
        }
    }

    /// Client frames one after another, as the signaling connection reads them: bounded by the
    /// buffer, unmasked in place, control frames short and final.
    static func webSocket(_ b: UnsafeRawBufferPointer) {
        guard let first = b.first else { return }
        let maxPayload = Int(first) * 64
        var buffer = Array(b[1...])
        var offset = 0
        while offset < buffer.count {
            let result = buffer.withUnsafeBytes { WebSocket.parse(UnsafeRawBufferPointer(rebasing: $0[offset...]), maxPayload: maxPayload) }
            guard case .frame(let f) = result else { return }
            require(f.frameLength <= buffer.count - offset && f.payloadLength <= maxPayload, "a frame lies inside the buffer and the limit")
            require(f.opcode.rawValue < 8 || (f.fin && f.payloadLength <= 125), "control frames are final and at most 125 bytes")
            if let key = f.maskKey {
                buffer.withUnsafeMutableBytes { p in
                    WebSocket.unmask(UnsafeMutableRawBufferPointer(rebasing: p[(offset + f.payloadStart)..<(offset + f.frameLength)]), key: key)
                }
            }
            offset += f.frameLength
        }
    }
}
