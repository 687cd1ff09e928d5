#if canImport(Glibc)
import Glibc
#endif
import CFerryLinux
import FerryCore
import FerrySystem
import FerryTURN

/// The relayed sockets of a worker's TURN service: opened from its port block (RelayPorts),
/// registered on its loop, closed after what was queued for them has left.
extension TURNService {
    // MARK: RelayProvider

    /// Relayed ports come from this worker's block of the range (RelayPorts); a failure is
    /// counted and logged there with its reason, and the Allocate is answered 508.
    func openRelay(ip: IPAddress, evenPort: Bool, slot: Int32, generation: UInt32) -> (relay: RelayID, port: UInt16)? {
        switch ports.open(ip: ip, evenPort: evenPort) {
        case .opened(let fd, let port):
            guard let relay = register(fd, slot: slot, generation: generation) else { return nil }
            return (relay, port)
        case .failed(let reason, let e):
            ports.report(reason, errno: e, ip: ip, server: server, now: loop.now)
            return nil
        }
    }

    func register(_ fd: FileDescriptor, slot: Int32, generation: UInt32) -> RelayID? {
        let local = (try? Sockets.localAddress(fd.raw)) ?? SocketAddress(ip: .ipv4Any, port: 0)
        let socket = RelaySocket(fd: fd, slot: slot, generation: generation, local: local, worker: self)
        guard let registration = try? loop.register(fd: fd.raw, events: Epoll.input, handler: socket) else {
            fd.close()
            return nil
        }
        socket.registration = registration
        let id = relays.insert(socket)
        if local.port != 0 { localRelays[local] = id }
        return id
    }

    func openReserved(ip: IPAddress, port: UInt16) -> ReservedRelay? {
        let fd: FileDescriptor
        switch ports.open(ip: ip, port: port) {
        case .opened(let opened, _): fd = opened
        case .failed(let reason, let e):
            ports.report(reason, errno: e, ip: ip, server: server, now: loop.now)
            return nil
        }
        // Held as a token until some worker adopts it or the reservation expires (TURNShared):
        // it crosses threads, so no worker's table owns it meanwhile.
        return ReservedRelay(token: fd.release())
    }

    func adopt(_ reserved: ReservedRelay, slot: Int32, generation: UInt32) -> RelayID? {
        register(FileDescriptor(reserved.token), slot: slot, generation: generation)
    }

    func closeReserved(_ reserved: ReservedRelay) {
        FileDescriptor(reserved.token).close()
    }

    func closeRelay(_ relay: RelayID) {
        let handle = relays.fd(relay)
        guard handle >= 0 else { return }
        // Datagrams queued for this socket earlier in the batch leave first: after close the
        // number could be reused by the next relayed socket.
        if handle == toPeerFD || (train.count > 0 && train.handle == handle) { flushPeer() }
        guard let socket = relays.remove(relay) else { return }
        if localRelays[socket.local] == relay { localRelays[socket.local] = nil }
        if let r = socket.registration { loop.deregister(fd: handle, r) }
        socket.fd.close()
    }

    func setDontFragment(_ relay: RelayID) {
        let handle = relays.fd(relay)
        guard handle >= 0, let local = try? Sockets.localAddress(handle) else { return }
        if local.ip.isIPv4 {
            _ = try? Sockets.setOption(handle, Int32(IPPROTO_IP), ferry_ip_mtu_discover, ferry_ip_pmtudisc_do, "setsockopt(IP_MTU_DISCOVER)")
        } else {
            _ = try? Sockets.setOption(handle, Int32(IPPROTO_IPV6), ferry_ipv6_mtu_discover, ferry_ip_pmtudisc_do, "setsockopt(IPV6_MTU_DISCOVER)")
        }
    }
}

/// One relayed socket: which allocation slot (and generation) it serves.
final class RelaySocket: EventHandler {
    let fd: FileDescriptor
    let slot: Int32
    let generation: UInt32
    /// Its relayed address as bound (what a peer sees as the source of its datagrams).
    let local: SocketAddress
    var registration: Registration?
    var hot = HotSocket()
    /// The service owns every relayed socket (its `RelayTable`) and deregisters one from the
    /// loop before dropping it, so no event reaches a socket whose service is gone.
    private unowned let worker: TURNService

    init(fd: FileDescriptor, slot: Int32, generation: UInt32, local: SocketAddress, worker: TURNService) {
        self.fd = fd
        self.slot = slot
        self.generation = generation
        self.local = local
        self.worker = worker
    }

    func handleEvent(_ events: UInt32, loop: EventLoop) { worker.relayReadable(self) }
}
