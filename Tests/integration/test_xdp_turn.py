"""TURN channels in the XDP fast path (docs/xdp.md) on lab.py's routed namespaces: a TURN client
on one LAN, its peer on the other, ferryd in between with its program attached (generic mode).
ChannelData from the client leaves the kernel stripped, to the peer, from the relayed address;
the peer's datagrams come back with the header added, from the listener's address: byte for byte
what user space sends, with checksums that verify, while user space never sees them (its
socket's counters stay flat) and still counts them. Deleting the allocation, or a reload that
denies the peer, takes the channel out at once; a real client (coturn's turnutils_uclient) runs
through it without loss."""
import os
import re
import signal
import socket
import struct
import subprocess
import time

import pytest

import turnclient as tc
from conftest import ferryd_factory, wait_until  # noqa: F401
from lab import ADMIN_IP, FERRY_IP, Lab
from netns import available
from test_xdp import capture_in, checksums_hold, interface, made_in, udp_port_in

TURN = (FERRY_IP, 3478)
LISTENER = {"listener": "turn-udp"}
DIRECTIONS = ("to_peer", "to_client")


def config(lab, extra_policy=""):
    return f'''[admin]
address = "{ADMIN_IP}:9100"
[server]
workers = 2
drain_seconds = 0
[engine]
xdp = "generic"
xdp_interfaces = ["{lab.ferry_if}"]
[turn]
realm = "lab"
relay_ipv4 = "{FERRY_IP}"
port_min = 50000
port_max = 50999
[[turn.user]]
name = "test"
password = "pass"
[policy]
allow = ["10.0.0.0/8"]
{extra_policy}
[[listener]]
name = "turn-udp"
address = "{FERRY_IP}:3478"
service = "turn"
'''


class Channel:
    """lab.py with routed LANs (no NAT) and ferryd serving TURN with XDP; a TURN client in A's
    namespace with an allocation and a channel to a UDP peer in B's."""

    def __init__(self, factory):
        self.lab = Lab(nat_a="none", nat_b="none")
        try:
            self.lab.ferry.exec("sysctl", "-qw", f"net.ipv4.conf.{self.lab.ferry_if}.forwarding=1")
            self.lab.checksums_in_software()
            self.start(factory)
        except BaseException:
            self.lab.close()
            raise

    def start(self, factory, extra_policy=""):
        self.ferryd = factory(config(self.lab, extra_policy), prefix=self.lab.ferry.prefix(), admin_host=ADMIN_IP, admin_port=9100)

    def bind(self, number=0x4001):
        self.client = made_in(self.lab.peer_a, lambda: tc.TurnClient(TURN, "test", "pass", bind="0.0.0.0"))
        self.peer = udp_port_in(self.lab.peer_b)
        r = self.client.allocate()
        assert r.ok, r.attrs
        self.relayed = r.addresses(tc.XOR_RELAYED_ADDRESS)[0]
        self.peer_address = ("10.2.0.2", self.peer.address[1])
        self.number = number
        assert self.client.channel_bind(number, *self.peer_address).ok
        wait_until(lambda: self.metric("ferry_xdp_channel_entries") == 1, what=lambda: self.ferryd.output()[-2000:])

    def to_peer(self, payload):
        self.client.send_raw(struct.pack("!HH", self.number, len(payload)) + payload)

    def metric(self, name, labels=None):
        return self.ferryd.metric(name, labels) or 0

    def kernel(self, direction):
        return self.metric("ferry_xdp_channel_packets_total", {"direction": direction})

    def passed(self):
        return {k: self.metric("ferry_xdp_passed_total", {"reason": k})
                for k in ("no_entry", "not_data", "truncated", "no_route", "forwarding_off", "expired", "padded", "too_big",
                          "no_headroom", "checksum_partial")}

    def close(self):
        for s in (getattr(self, "client", None), getattr(self, "peer", None)):
            if s:
                s.close()
        self.lab.close()


@pytest.fixture
def channel(ferryd_factory):  # noqa: F811
    if not available():
        pytest.skip("ip netns needs root")
    c = Channel(ferryd_factory)
    yield c
    c.close()


def test_channel_data_is_forwarded_in_the_kernel_both_ways_byte_for_byte(channel):
    c = channel
    c.bind()
    # The senders' kernels write whole UDP checksums (Lab.checksums_in_software); what arrives is
    # read raw, so the program's rewritten checksums are checked here, not trusted along a veth path.
    raw_b, raw_a = capture_in(c.lab.peer_b), capture_in(c.lab.peer_a)
    seen_by_user_space = c.metric("ferry_udp_datagrams_received_total", LISTENER)
    relayed = {d: c.metric("ferry_turn_relayed_packets_total", {"direction": d}) for d in DIRECTIONS}
    sizes = [0, 1, 3, 148, 1199, 1200, 1400]
    sent = 0
    for size in sizes:
        payload = os.urandom(size)
        c.to_peer(payload)
        got, frm = c.peer.recv()
        assert got == payload and frm == tuple(c.relayed), "the data alone, from the relayed address"
        c.peer.send(payload[::-1], TURN[:1] + (c.relayed[1],))
        back = c.client.sock.recvfrom(2048)
        assert back == (struct.pack("!HH", c.number, size) + payload[::-1], TURN), "ChannelData from the listener, unpadded"
        sent += size
    assert [c.kernel(d) for d in DIRECTIONS] == [len(sizes)] * 2, c.passed()
    assert c.metric("ferry_xdp_channel_bytes_total", {"direction": "to_peer"}) == sent
    assert c.metric("ferry_udp_datagrams_received_total", LISTENER) == seen_by_user_space, "user space never saw them"
    for raw, port, offset in ((raw_b, c.peer.address[1], 0), (raw_a, c.client.sock.getsockname()[1], 4)):
        checked = 0
        while checked < len(sizes):
            packet = raw.recv(4096)
            if packet[9] == 17 and struct.unpack("!H", packet[22:24])[0] == port:
                assert checksums_hold(packet), packet[:48].hex()
                assert len(packet) == 28 + offset + sizes[checked]
                checked += 1
        raw.close()
    # Read back within a second into TURN's own counters, and the allocation's.
    wait_until(lambda: all(c.metric("ferry_turn_relayed_packets_total", {"direction": d}) == relayed[d] + len(sizes) for d in DIRECTIONS))


def test_deleting_the_allocation_takes_its_channel_out_at_once(channel):
    c = channel
    c.bind()
    c.to_peer(b"in the kernel")
    assert c.peer.recv()[0] == b"in the kernel"
    assert c.kernel("to_peer") == 1
    assert c.client.refresh(0).ok
    wait_until(lambda: c.metric("ferry_xdp_channel_entries") == 0)
    no_allocation = c.metric("ferry_turn_drops_total", {"reason": "no_allocation"})
    c.to_peer(b"after the end")
    c.peer.send(b"to nobody", (FERRY_IP, c.relayed[1]))
    with pytest.raises(socket.timeout):
        c.peer.recv(timeout=0.5)
    wait_until(lambda: c.metric("ferry_turn_drops_total", {"reason": "no_allocation"}) == no_allocation + 1)
    assert c.kernel("to_peer") == 1 and c.kernel("to_client") == 0


def test_a_reload_that_denies_the_peer_stops_its_channel_in_both_paths(channel):
    c = channel
    c.bind()
    c.to_peer(b"allowed")
    assert c.peer.recv()[0] == b"allowed"
    with open(c.ferryd.config_path, "w") as f:
        f.write(config(c.lab, 'deny = ["10.2.0.0/16"]'))
    reloads = c.metric("ferry_reloads_total", {"result": "ok"})
    c.ferryd.signal(signal.SIGHUP)
    wait_until(lambda: c.metric("ferry_reloads_total", {"result": "ok"}) == reloads + 1)
    wait_until(lambda: c.metric("ferry_xdp_channel_entries") == 0)
    c.to_peer(b"denied now")
    c.peer.send(b"denied too", (FERRY_IP, c.relayed[1]))
    with pytest.raises(socket.timeout):
        c.peer.recv(timeout=0.5)
    with pytest.raises(socket.timeout):
        c.client.sock.recv(2048)
    assert c.kernel("to_peer") == 1 and c.kernel("to_client") == 0
    assert c.metric("ferry_turn_drops_total", {"reason": "no_channel"}) >= 1
    assert c.metric("ferry_turn_drops_total", {"reason": "no_permission"}) >= 1


def test_what_the_program_does_not_handle_goes_up_and_is_handled_there(channel):
    c = channel
    c.bind()
    malformed = c.metric("ferry_turn_drops_total", {"reason": "malformed"})
    # Padded ChannelData (legal over UDP): user space strips the padding and relays it.
    c.client.send_raw(struct.pack("!HH", c.number, 3) + b"abc\0")
    assert c.peer.recv()[0] == b"abc"
    # Shorter than its length says: malformed, in user space.
    c.client.send_raw(struct.pack("!HH", c.number, 40) + b"short")
    wait_until(lambda: c.metric("ferry_turn_drops_total", {"reason": "malformed"}) == malformed + 1)
    # A channel nobody bound: no entry, and user space drops it.
    c.client.send_raw(struct.pack("!HH", 0x4FFF, 2) + b"no")
    wait_until(lambda: c.metric("ferry_turn_drops_total", {"reason": "no_channel"}) >= 1)
    # STUN to the listener goes up and is answered.
    assert c.client.binding().cls == 2
    p = c.passed()
    assert p["padded"] == 1 and p["truncated"] == 1 and p["no_entry"] >= 1 and p["not_data"] >= 1, p
    assert c.kernel("to_peer") == 0


def test_turnutils_uclient_runs_through_the_kernel_path_without_loss(channel):
    """coturn's client in A's namespace, coturn's echoing peer in B's: every message out and back
    over channels, most of them by the kernel (the first may pass before the entry is in)."""
    c = channel
    port = 3480
    peer = subprocess.Popen(c.lab.peer_b.prefix() + ["turnutils_peer", "-p", str(port), "-L", "10.2.0.2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        r = subprocess.run(c.lab.peer_a.prefix() + ["turnutils_uclient", "-p", "3478", "-u", "test", "-w", "pass", "-e", "10.2.0.2",
                                                    "-r", str(port), "-n", "300", "-m", "2", "-l", "1000", "-z", "5", FERRY_IP],
                           capture_output=True, text=True, timeout=120)
    finally:
        peer.kill()
        peer.wait()
    out = r.stdout + r.stderr
    m = re.search(r"Total lost packets (\d+) \(([\d.]+)%\)", out)
    assert m and int(m.group(1)) == 0, out[-3000:]
    assert c.kernel("to_peer") >= 500 and c.kernel("to_client") >= 500, (c.kernel("to_peer"), c.kernel("to_client"), c.passed())



def test_a_checksum_left_to_offload_goes_up_and_user_space_relays_it(channel):
    """Over veth, a sender's offloaded UDP checksum arrives unfinished (CHECKSUM_PARTIAL); the
    kernel would finish it from the packet's old layout after the program moved the headers.
    Such a packet goes up, counted, and user space relays it."""
    c = channel
    c.bind()
    c.lab.peer_a.exec("ethtool", "-K", interface(c.lab.peer_a), "tx", "on")
    c.to_peer(b"offloaded")
    assert c.peer.recv()[0] == b"offloaded"
    assert c.passed()["checksum_partial"] == 1 and c.kernel("to_peer") == 0
    c.lab.peer_a.exec("ethtool", "-K", interface(c.lab.peer_a), "tx", "off")
    c.to_peer(b"finished")
    assert c.peer.recv()[0] == b"finished"
    assert c.kernel("to_peer") == 1


def test_ipv6_goes_up_and_user_space_relays_it(ferryd_factory):  # noqa: F811
    """The program handles IPv4 only: IPv6 on the attached interface goes up untouched and TURN
    over IPv6 works as without XDP, its channel never mirrored into the kernel's maps. A client
    and a peer in the lab's router namespace reach ferryd over IPv6 on the same veth."""
    if not available():
        pytest.skip("ip netns needs root")
    lab = Lab(nat_a="none", nat_b="none")
    try:
        inet_if = next(l.split()[1] for l in lab.inet.exec("ip", "-o", "-4", "addr", "show").stdout.splitlines() if "198.51.100.254" in l)
        lab.inet.exec("ip", "addr", "add", "fd00:77::fe/64", "dev", inet_if, "nodad")
        lab.ferry.exec("ip", "addr", "add", "fd00:77::1/64", "dev", lab.ferry_if, "nodad")
        lab.ferry.exec("sysctl", "-qw", f"net.ipv4.conf.{lab.ferry_if}.forwarding=1")
        cfg = config(lab).replace('relay_ipv4 = "198.51.100.1"', 'relay_ipv4 = "198.51.100.1"\nrelay_ipv6 = "fd00:77::1"') \
                         .replace('allow = ["10.0.0.0/8"]', 'allow = ["10.0.0.0/8", "fd00::/8"]') \
            + '[[listener]]\nname = "turn-udp6"\naddress = "[fd00:77::1]:3478"\nservice = "turn"\n'
        f = ferryd_factory(cfg, prefix=lab.ferry.prefix(), admin_host=ADMIN_IP, admin_port=9100)
        assert f.metric("ferry_xdp_attached") == 1, f.output()
        client = made_in(lab.inet, lambda: tc.TurnClient(("fd00:77::1", 3478), "test", "pass", family=socket.AF_INET6, bind="fd00:77::fe"))
        peer = made_in(lab.inet, lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
        peer.bind(("fd00:77::fe", 0))
        peer.settimeout(2)
        r = client.allocate([(tc.REQUESTED_ADDRESS_FAMILY, struct.pack("!I", 2 << 24))])
        assert r.ok, r.attrs
        relayed = r.addresses(tc.XOR_RELAYED_ADDRESS)[0]
        assert relayed[0] == "fd00:77::1"
        assert client.channel_bind(0x4001, "fd00:77::fe", peer.getsockname()[1]).ok
        for i in range(20):
            payload = os.urandom(100 + i)
            client.send_raw(struct.pack("!HH", 0x4001, len(payload)) + payload)
            got, frm = peer.recvfrom(2048)
            assert got == payload and frm[:2] == relayed
            peer.sendto(payload[::-1], relayed)
            assert client.sock.recv(2048) == struct.pack("!HH", 0x4001, len(payload)) + payload[::-1]
        assert (f.metric("ferry_xdp_channel_entries") or 0) == 0, "an IPv6 channel is not mirrored"
        assert sum(f.metric("ferry_xdp_channel_packets_total", {"direction": d}) or 0 for d in DIRECTIONS) == 0
        assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_peer"}) == 20
        assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_client"}) == 20
        client.close()
        peer.close()
    finally:
        lab.close()
