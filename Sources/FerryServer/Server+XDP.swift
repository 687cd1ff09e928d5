import FerryConfig
import FerryCore
import FerrySystem
import FerryXDP

/// The XDP fast path's part of the composition (docs/xdp.md): load the program, attach it to
/// `engine.xdp_interfaces`, tell it the relay's and TURN's ports, hand its tables to the relay
/// and to each TURN worker. Any refusal (kernel, driver, permissions) is logged with its reason
/// and ferryd serves from user space: the fast path only ever carries what user space would
/// carry anyway.
extension Server {
    func setUpXDP() {
        guard config.engine.xdp != .off else { return }
        let relayPorts = config.listeners.filter { $0.service == .relay }.compactMap { boundAddresses[$0.name]?.port }
        let turnPorts = config.listeners.filter { $0.service == .turn && $0.transport == .udp }.compactMap { boundAddresses[$0.name]?.port }
        let turn = !turnPorts.isEmpty && !turnServices.isEmpty && config.turn.relayIPv4 != nil
        guard (relay != nil && !relayPorts.isEmpty) || turn else {
            logger.warning("engine.xdp is on but no listener serves the native relay or TURN over UDP with an IPv4 relay: the XDP program has nothing to forward and is not loaded")
            return
        }
        let mode: XDPProgram.Mode = config.engine.xdp == .native ? .native : .generic
        let program: XDPProgram
        do throws(XDPProgram.Failure) {
            program = try XDPProgram(mode: mode, sessions: config.engine.xdpSessions, channels: config.engine.xdpChannels)
            for port in relayPorts { try program.watch(port: port) }
            if turn {
                try program.watchTURN(ports: turnPorts, relayPorts: UInt16(config.turn.portMin)...UInt16(max(config.turn.portMin, config.turn.portMax)))
            }
            for name in config.engine.xdpInterfaces { try program.attach(name) }
        } catch {
            logger.error("XDP fast path off; ferryd serves from user space", metadata: ["reason": "\(error)"])
            return
        }
        // bpf_fib_lookup answers only on interfaces that forward; without it every packet goes up.
        for name in config.engine.xdpInterfaces where XDPProgram.forwarding(name) == false {
            logger.warning("XDP passes every packet to user space on this interface until it forwards: set net.ipv4.conf.\(name).forwarding = 1 (docs/xdp.md)",
                           metadata: ["interface": "\(name)"])
        }
        xdp = program
        let counters = XDPCounters(registering: metrics)
        relay?.use(program.flowTable(), counters: counters)
        if turn { useXDPForTURN(program, counters: counters) }
        registerXDPStats(program)
        logger.info("XDP fast path", metadata: ["mode": "\(mode.rawValue)", "interfaces": "\(config.engine.xdpInterfaces.joined(separator: ","))",
                                                 "sessions": "\(config.engine.xdpSessions)", "channels": "\(turn ? config.engine.xdpChannels : 0)"])
    }

    /// Each TURN worker mirrors its channels into the program's maps, with its own range of the
    /// counter map (an even share of engine.xdp_channels allocations).
    private func useXDPForTURN(_ program: XDPProgram, counters: XDPCounters) {
        let share = max(1, config.engine.xdpChannels / turnServices.count)
        for (w, service) in turnServices.enumerated() {
            let listeners = workers[w].datagramSockets.map { (try? Sockets.localAddress($0.fd.raw)) ?? SocketAddress(ip: .ipv6Any, port: 0) }
            service.use(program.channelTable(), counters: counters, capacity: share, counterOffset: UInt32(w * share * 2), listeners: listeners)
        }
    }

    /// The program's own per-CPU counters, read at scrape time.
    private func registerXDPStats(_ program: XDPProgram) {
        let interfaces = Double(program.attached.count)
        metrics.computedGauge("ferry_xdp_attached", "Interfaces the XDP program is attached to.") { [(labels: "", value: interfaces)] }
        metrics.computedCounter("ferry_xdp_forwarded_packets_total", "WireGuard packets the XDP program forwarded (counted again, per session, in ferry_relay_packets_total).") {
            [(labels: "", value: Double(program.stats()[Int(XDPStat.forwarded)]))]
        }
        metrics.computedCounter("ferry_xdp_forwarded_bytes_total", "Bytes of WireGuard packets the XDP program forwarded.") {
            [(labels: "", value: Double(program.stats()[Int(XDPStat.forwardedBytes)]))]
        }
        metrics.computedCounter("ferry_xdp_redirected_packets_total", "Packets the XDP program forwarded (native relay and TURN channels) out of another attached interface than the one they arrived on (XDP_REDIRECT).") {
            [(labels: "", value: Double(program.stats()[Int(XDPStat.redirected)]))]
        }
        metrics.computedCounter("ferry_xdp_passed_total", "Packets to a relay port the XDP program passed to user space, by reason.") {
            let s = program.stats()
            return XDPStat.passed.map { (labels: "reason=\"\($0.label)\"", value: Double(s[Int($0.stat)])) }
        }
        metrics.computedCounter("ferry_xdp_channel_packets_total", "TURN ChannelData the XDP program forwarded, by direction (counted again, per allocation, in ferry_turn_relayed_packets_total).") {
            let s = program.stats()
            return XDPStat.channels.map { (labels: "direction=\"\($0.label)\"", value: Double(s[Int($0.packets)])) }
        }
        metrics.computedCounter("ferry_xdp_channel_bytes_total", "Application bytes (without the ChannelData header) of TURN channel data the XDP program forwarded, by direction.") {
            let s = program.stats()
            return XDPStat.channels.map { (labels: "direction=\"\($0.label)\"", value: Double(s[Int($0.bytes)])) }
        }
    }
}
