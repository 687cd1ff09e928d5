"""The XDP fast path (docs/xdp.md) on lab.py's namespaces: ferryd's program attached (generic
mode) to its interface toward the peers. Native-relay data is forwarded by the kernel, byte for
byte what user space would send, and user space never sees it (its socket's counters stay
flat); ferryd's own counters still count it; unbind, expiry and a SIGKILL leave nothing
forwarding; what the program does not handle goes up and is counted there."""
import ctypes
import os
import signal
import socket
import struct
import subprocess

import pytest

from conftest import ferryd_factory, listener, tmpdir_path, wait_until  # noqa: F401
from lab import ADMIN_IP, FERRY_IP, Lab
from netns import available, veth
from wgrelay import UDPPort, bind, credential, data, initiation, response
from test_relay import StockPair, needs_lab

SECRET = "relay-secret-for-tests-0123"
RELAY = (FERRY_IP, 3479)
CLONE_NEWNET = 0x40000000
LISTENER = {"listener": "relay-udp"}


def made_in(ns, make):
    """What `make()` returns, made inside namespace `ns` (a socket stays there once the test
    switches back)."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        assert libc.setns(there, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
        try:
            return make()
        finally:
            assert libc.setns(home, CLONE_NEWNET) == 0
    finally:
        os.close(home)
        os.close(there)


def udp_port_in(ns):
    """A UDP socket made inside namespace `ns`."""
    return made_in(ns, lambda: UDPPort(host="0.0.0.0"))


def config(lab, mode="generic", interfaces=None, extra=""):
    ifs = ", ".join(f'"{i}"' for i in (interfaces or [lab.ferry_if]))
    return f'[admin]\naddress = "{ADMIN_IP}:9100"\n[server]\nworkers = 2\ndrain_seconds = 0\n' \
           f'[engine]\nxdp = "{mode}"\nxdp_interfaces = [{ifs}]\n' \
           f'[turn]\nrealm = "lab"\nstatic_auth_secrets = ["{SECRET}"]\n{extra}' + listener("relay-udp", 3479, service="relay", host=FERRY_IP)


class Routed:
    """lab.py with routed LANs (no NAT), ferryd serving the native relay with XDP, and two
    peers' sockets in their namespaces bound as one session with a handshake done."""

    def __init__(self, factory, mode="generic", extra=""):
        self.factory = factory
        self.lab = Lab(nat_a="none", nat_b="none")
        self.b_ns = self.lab.peer_b
        try:
            self.lab.checksums_in_software()
            self.start(factory, mode, extra)
        except BaseException:
            self.lab.close()
            raise

    def start(self, factory, mode="generic", extra=""):
        # The kernel's route lookup from XDP is a forwarding lookup (docs/xdp.md).
        self.lab.ferry.exec("sysctl", "-qw", f"net.ipv4.conf.{self.lab.ferry_if}.forwarding=1")
        self.ferryd = (factory or self.factory)(config(self.lab, mode, extra=extra), prefix=self.lab.ferry.prefix(), admin_host=ADMIN_IP, admin_port=9100)

    def pair(self):
        self.ka, self.kb = os.urandom(32), os.urandom(32)
        self.a, self.b = udp_port_in(self.lab.peer_a), udp_port_in(self.b_ns)
        assert bind(self.a, RELAY, credential(SECRET, self.ka, "lab"), self.kb).state == 0
        assert bind(self.b, RELAY, credential(SECRET, self.kb, "lab"), self.ka).state == 1
        self.ia, self.ib = 0x01020304, 0x0A0B0C0D
        self.a.send(initiation(self.ia, self.kb), RELAY)
        assert self.b.recv()[0][0] == 1
        self.b.send(response(self.ib, self.ia, self.ka), RELAY)
        assert self.a.recv()[0][0] == 2

    def metric(self, name, labels=None):
        return self.ferryd.metric(name, labels) or 0

    def close(self):
        for p in (getattr(self, "a", None), getattr(self, "b", None)):
            if p:
                p.close()
        self.lab.close()


@pytest.fixture
def routed(ferryd_factory):  # noqa: F811
    if not available():
        pytest.skip("ip netns needs root")
    r = Routed(ferryd_factory)
    yield r
    r.close()


def xdp_forwarded(r):
    return r.metric("ferry_xdp_forwarded_packets_total")


def interface(ns):
    """The namespace's one interface besides loopback."""
    out = ns.exec("ip", "-o", "link", "show").stdout
    return next(l.split(": ")[1].split("@")[0] for l in out.splitlines() if ": lo:" not in l)


def capture_in(ns):
    """An AF_PACKET socket in namespace `ns` that reads the IPv4 packets arriving there."""
    name = interface(ns)

    def make():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        s.bind((name, 0x0800))
        s.settimeout(2)
        return s
    return made_in(ns, make)


def ones_sum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksums_hold(packet):
    """The IPv4 header checksum and the UDP checksum (over its pseudo-header) of `packet` verify."""
    ihl = (packet[0] & 15) * 4
    udp = packet[ihl:]
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    return ones_sum(packet[:ihl]) == 0xFFFF and struct.unpack("!H", udp[6:8])[0] != 0 and ones_sum(pseudo + udp) == 0xFFFF


def test_bound_session_data_is_forwarded_in_the_kernel_byte_for_byte(routed):
    r = routed
    assert r.metric("ferry_xdp_attached") == 1, r.ferryd.output()
    r.pair()
    wait_until(lambda: r.metric("ferry_xdp_entries") == 2, what=lambda: r.ferryd.output()[-2000:])
    # a's kernel writes whole UDP checksums (Lab.checksums_in_software), and what reaches b is
    # read raw: the program's rewritten checksums are checked here, not trusted along a veth path.
    raw = capture_in(r.lab.peer_b)
    seen_by_user_space = r.metric("ferry_udp_datagrams_received_total", LISTENER)
    relay_packets = r.metric("ferry_relay_packets_total")
    sent = []
    for i in range(50):
        for src, dst, index in ((r.a, r.b, r.ib), (r.b, r.a, r.ia)):
            m = data(index, os.urandom(i * 25))
            src.send(m, RELAY)
            got, frm = dst.recv()
            assert got == m and frm == RELAY, "as it was sent, from the relay's address and port"
            sent.append(len(m))
    assert xdp_forwarded(r) == 100, [(k, r.metric("ferry_xdp_passed_total", {"reason": k})) for k in
                                     ("no_entry", "not_data", "fragment", "truncated", "no_route", "forwarding_off")]
    assert r.metric("ferry_xdp_forwarded_bytes_total") == sum(sent)
    b_port = r.b.address[1]
    checked = 0
    while checked < 50:
        packet = raw.recv(4096)
        if packet[9] == 17 and struct.unpack("!H", packet[22:24])[0] == b_port and packet[28] == 4:
            assert checksums_hold(packet), packet[:48].hex()
            assert packet[8] == 64 - 2, "64 from the relay, as its own sends, less the lab's two routers"
            checked += 1
    raw.close()
    assert r.metric("ferry_udp_datagrams_received_total", LISTENER) == seen_by_user_space, "user space never saw them"
    # Read back within a second into the relay's own counters (and the session's).
    wait_until(lambda: r.metric("ferry_relay_packets_total") == relay_packets + 100)
    assert r.metric("ferry_relay_bytes_total") >= sum(sent)


def test_unbind_and_a_rebinding_take_entries_out_at_once(routed):
    r = routed
    r.pair()
    wait_until(lambda: r.metric("ferry_xdp_entries") == 2)
    # Another port on a's host that knows b's index (an on-path observer would) is not a's flow:
    # the kernel passes it up, and user space drops it.
    stranger = udp_port_in(r.lab.peer_a)
    unknown = r.metric("ferry_relay_drops_total", {"reason": "unknown_index"})
    stranger.send(data(r.ib, b"spoofed"), RELAY)
    wait_until(lambda: r.metric("ferry_relay_drops_total", {"reason": "unknown_index"}) == unknown + 1)
    with pytest.raises(socket.timeout):
        r.b.recv(timeout=0.3)
    assert xdp_forwarded(r) == 0
    stranger.close()
    # b's NAT moved it: a fresh bind from a new port. a's data goes to the new port, in the kernel.
    moved = udp_port_in(r.lab.peer_b)
    assert bind(moved, RELAY, credential(SECRET, r.kb, "lab"), r.ka).state == 1
    wait_until(lambda: r.metric("ferry_xdp_entries") == 2)
    before = xdp_forwarded(r)
    m = data(r.ib, b"after the move")
    r.a.send(m, RELAY)
    assert moved.recv()[0] == m
    assert xdp_forwarded(r) == before + 1
    # a unbinds: nothing of the session forwards, in the kernel or above it.
    assert bind(r.a, RELAY, credential(SECRET, r.ka, "lab"), r.kb, lifetime=0).success
    wait_until(lambda: r.metric("ferry_xdp_entries") == 0)
    passed = r.metric("ferry_xdp_passed_total", {"reason": "no_entry"})
    moved.send(data(r.ia, b"to nobody"), RELAY)
    with pytest.raises(socket.timeout):
        r.a.recv(timeout=0.5)
    assert r.metric("ferry_xdp_passed_total", {"reason": "no_entry"}) == passed + 1
    assert xdp_forwarded(r) == before + 1
    moved.close()


def test_what_the_program_does_not_handle_goes_up_and_is_counted_there(routed):
    r = routed
    r.pair()
    wait_until(lambda: r.metric("ferry_xdp_entries") == 2)
    malformed = r.metric("ferry_relay_drops_total", {"reason": "malformed"})
    r.a.send(data(r.ib)[:20], RELAY)   # a data message cut short
    r.a.send(bytes([4, 1, 0, 0]) + data(r.ib)[4:], RELAY)  # reserved bytes not zero
    wait_until(lambda: r.metric("ferry_relay_drops_total", {"reason": "malformed"}) == malformed + 2)
    assert r.metric("ferry_xdp_passed_total", {"reason": "truncated"}) >= 1
    assert r.metric("ferry_xdp_passed_total", {"reason": "not_data"}) >= 1
    # A handshake goes up (user space learns indices from it) and is still forwarded.
    r.a.send(initiation(0x7777, r.kb), RELAY)
    assert r.b.recv()[0][0] == 1
    with pytest.raises(socket.timeout):
        r.b.recv(timeout=0.3)


def test_a_killed_ferryd_leaves_nothing_forwarding_and_a_new_one_attaches_afresh(routed):
    r = routed
    r.pair()
    wait_until(lambda: r.metric("ferry_xdp_entries") == 2)
    os.killpg(r.ferryd.proc.pid, signal.SIGKILL)
    r.ferryd.proc.wait()
    link = r.lab.ferry.exec("ip", "-d", "link", "show", "dev", r.lab.ferry_if).stdout
    assert "xdp" not in link, link
    r.a.send(data(r.ib, b"after the crash"), RELAY)
    with pytest.raises(socket.timeout):
        r.b.recv(timeout=0.5)
    # A new ferryd finds the interface free (the link went with the process) and starts empty.
    r.start(None)
    assert r.metric("ferry_xdp_attached") == 1 and r.metric("ferry_xdp_entries") == 0, r.ferryd.output()
    r.a.send(data(r.ib, b"old session"), RELAY)
    with pytest.raises(socket.timeout):
        r.b.recv(timeout=0.5)
    r.a.close()
    r.b.close()
    r.pair()
    wait_until(lambda: r.metric("ferry_xdp_entries") == 2)
    m = data(r.ib, b"new session")
    r.a.send(m, RELAY)
    assert r.b.recv()[0] == m
    assert xdp_forwarded(r) == 1


def test_a_refused_attach_is_explained_and_user_space_serves(ferryd_factory):  # noqa: F811
    from conftest import free_port
    port = free_port(socket.SOCK_DGRAM)
    f = ferryd_factory(f'[server]\nworkers = 1\ndrain_seconds = 0\n[engine]\nxdp = "native"\nxdp_interfaces = ["nosuchif0"]\n'
                       f'[turn]\nrealm = "t"\nrelay_ipv4 = "127.0.0.1"\nstatic_auth_secrets = ["{SECRET}"]\n'
                       + listener("relay-udp", port, service="relay"))
    line = next(l for l in f.output().splitlines() if "XDP fast path off" in l)
    assert 'no interface \\"nosuchif0\\"' in line or 'no interface "nosuchif0"' in line, line
    assert (f.metric("ferry_xdp_attached") or 0) == 0
    ka, kb = os.urandom(32), os.urandom(32)
    a, b = UDPPort(), UDPPort()
    assert bind(a, ("127.0.0.1", port), credential(SECRET, ka, "n"), kb).state == 0
    assert bind(b, ("127.0.0.1", port), credential(SECRET, kb, "n"), ka).state == 1
    a.send(initiation(5, kb), ("127.0.0.1", port))
    assert b.recv()[0][0] == 1
    a.close()
    b.close()


@needs_lab
def test_stock_wireguard_behind_nats_is_carried_by_the_kernel(ferryd_factory, tmpdir_path):  # noqa: F811
    """Real WireGuard (wireguard-go behind symmetric NATs, bound from its own port, no Ferry
    process on the peers) through the native relay: after the handshake, its data never
    reaches ferryd's socket."""
    if not available():
        pytest.skip("ip netns needs root")
    p = StockPair(ferryd_factory, tmpdir_path, xdp=True)
    try:
        f = p.ferryd
        r = p.lab.peer_a.exec("ping", "-c", "3", "-i", "0.2", "-W", "5", p.b.address, check=False)
        assert r.returncode == 0, r.stdout + f.output()
        wait_until(lambda: (f.metric("ferry_xdp_entries") or 0) >= 2)
        user, kernel = f.metric("ferry_udp_datagrams_received_total", LISTENER), f.metric("ferry_xdp_forwarded_packets_total") or 0
        r = p.lab.peer_b.exec("ping", "-c", "100", "-i", "0.01", "-s", "1300", p.a.address, check=False)
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout
        assert f.metric("ferry_xdp_forwarded_packets_total") - kernel >= 200
        # A handshake or two may go up (WireGuard rekeys on its own clock); the data does not.
        assert f.metric("ferry_udp_datagrams_received_total", LISTENER) - user <= 4
    finally:
        p.close()


class TwoLANs(Routed):
    """Routed, with b on a LAN behind a second interface of ferryd's own (10.9.0.0/24): what one
    side sends leaves by the other interface. `both`: the program is attached to both."""

    def __init__(self, factory, both):
        self.both = both
        super().__init__(factory)

    def start(self, factory, mode="generic", extra=""):
        c = self.lab.ns("lpc")
        self.ferry_c, _ = veth(self.lab.ferry, "10.9.0.1/24", c, "10.9.0.2/24")
        c.exec("ip", "route", "add", "default", "via", "10.9.0.1")
        c.exec("ethtool", "-K", interface(c), "tx", "off")
        self.b_ns = c
        for i in (self.lab.ferry_if, self.ferry_c):
            self.lab.ferry.exec("sysctl", "-qw", f"net.ipv4.conf.{i}.forwarding=1")
        interfaces = [self.lab.ferry_if] + ([self.ferry_c] if self.both else [])
        self.ferryd = (factory or self.factory)(config(self.lab, mode, interfaces=interfaces), prefix=self.lab.ferry.prefix(),
                                                admin_host=ADMIN_IP, admin_port=9100)


def exchange(r, rounds):
    """`rounds` data messages each way, each received as sent and from the relay; their lengths."""
    sent = []
    for i in range(rounds):
        for src, dst, index in ((r.a, r.b, r.ib), (r.b, r.a, r.ia)):
            m = data(index, os.urandom(i * 25))
            src.send(m, RELAY)
            got, frm = dst.recv()
            assert got == m and frm == RELAY
            sent.append(len(m))
    return sent


@pytest.mark.parametrize("both", [True, False], ids=["attached-to-both", "attached-to-one"])
def test_a_route_out_of_another_interface_is_redirected_there_or_left_to_user_space(ferryd_factory, both):  # noqa: F811
    """A session between the lab's internet and a LAN behind ferryd's second interface. With
    the program on both interfaces, both directions are forwarded in the kernel (XDP_REDIRECT),
    byte for byte, checksums whole on arrival; with it on one only, the route out of the other
    is counted (other_interface) and user space forwards, losing nothing."""
    if not available():
        pytest.skip("ip netns needs root")
    r = TwoLANs(ferryd_factory, both)
    try:
        assert r.metric("ferry_xdp_attached") == (2 if both else 1), r.ferryd.output()
        r.pair()
        wait_until(lambda: r.metric("ferry_xdp_entries") == 2)
        raw = capture_in(r.b_ns)
        user = r.metric("ferry_udp_datagrams_received_total", LISTENER)
        sent = exchange(r, 30)
        if both:
            assert xdp_forwarded(r) == 60 and r.metric("ferry_xdp_redirected_packets_total") == 60
            assert r.metric("ferry_xdp_forwarded_bytes_total") == sum(sent)
            assert r.metric("ferry_udp_datagrams_received_total", LISTENER) == user, "user space never saw them"
            b_port, checked = r.b.address[1], 0
            while checked < 30:
                packet = raw.recv(4096)
                if packet[9] == 17 and struct.unpack("!H", packet[22:24])[0] == b_port and packet[28] == 4:
                    assert checksums_hold(packet), packet[:48].hex()
                    assert packet[8] == 64, "sent as the relay's own socket sends, no router between"
                    checked += 1
        else:
            assert xdp_forwarded(r) == 0
            assert r.metric("ferry_xdp_passed_total", {"reason": "other_interface"}) == 30
            assert r.metric("ferry_udp_datagrams_received_total", LISTENER) == user + 60
        raw.close()
    finally:
        r.close()
