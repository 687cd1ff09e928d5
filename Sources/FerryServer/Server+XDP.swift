import FerryConfig
import FerryCore
import FerryXDP

/// The XDP fast path's part of the composition (docs/xdp.md): load the program, attach it to
/// `engine.xdp_interfaces`, tell it the relay's ports, hand its table to the relay. Any refusal
/// (kernel, driver, permissions) is logged with its reason and ferryd serves from user space:
/// the fast path only ever carries what user space would carry anyway.
extension Server {
    func setUpXDP() {
        guard config.engine.xdp != .off else { return }
        let relayPorts = config.listeners.filter { $0.service == .relay }.compactMap { boundAddresses[$0.name]?.port }
        guard let relay, !relayPorts.isEmpty else {
            logger.warning("engine.xdp is on but no listener has service = \"relay\": the XDP program has nothing to forward and is not loaded")
            return
        }
        let mode: XDPProgram.Mode = config.engine.xdp == .native ? .native : .generic
        let program: XDPProgram
        do throws(XDPProgram.Failure) {
            program = try XDPProgram(mode: mode, sessions: config.engine.xdpSessions)
            for port in relayPorts { try program.watch(port: port) }
            for name in config.engine.xdpInterfaces { try program.attach(name) }
        } catch {
            logger.error("XDP fast path off; the relay serves from user space", metadata: ["reason": "\(error)"])
            return
        }
        // bpf_fib_lookup answers only on interfaces that forward; without it every packet goes up.
        for name in config.engine.xdpInterfaces where XDPProgram.forwarding(name) == false {
            logger.warning("XDP passes every packet to user space on this interface until it forwards: set net.ipv4.conf.\(name).forwarding = 1 (docs/xdp.md)",
                           metadata: ["interface": "\(name)"])
        }
        xdp = program
        relay.use(program.flowTable(), counters: XDPCounters(registering: metrics))
        registerXDPStats(program)
        logger.info("XDP fast path", metadata: ["mode": "\(mode.rawValue)", "interfaces": "\(config.engine.xdpInterfaces.joined(separator: ","))",
                                                 "sessions": "\(config.engine.xdpSessions)"])
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
        metrics.computedCounter("ferry_xdp_passed_total", "Packets to a relay port the XDP program passed to user space, by reason.") {
            let s = program.stats()
            return XDPStat.passed.map { (labels: "reason=\"\($0.label)\"", value: Double(s[Int($0.stat)])) }
        }
    }
}
