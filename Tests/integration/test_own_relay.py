"""Two peers that both fall back to one relay send to each other's relayed addresses. On a VPC or
CGNAT deployment those sit in a default-denied block; the relay's own relayed addresses are
permitted as peers on the ports of live allocations, and nothing else on that host or network is."""
import os
import signal
import socket
import struct

import pytest

import turnclient as tc
from conftest import free_port, listener, turn_listeners, wait_until
from test_stream import make_cert
from netns import namespaces, veth  # noqa: F401  (namespaces is a fixture)

RELAY = "10.203.0.2"
CLIENT = "10.203.0.1"


def config(admin_port):
    return f"""
[admin]
address = "{RELAY}:{admin_port}"
[server]
workers = 2
drain_seconds = 1
[turn]
realm = "ferry.test"
relay_ipv4 = "{RELAY}"
port_min = 50000
port_max = 50999
[[turn.user]]
name = "test"
password = "pass"
""" + listener("turn-udp", 3478, host=RELAY)


def channel_data(number, payload):
    """ChannelData over UDP: no padding (RFC 8656 §12.5)."""
    return struct.pack("!HH", number, len(payload)) + payload


def test_peers_on_one_private_relay_reach_each_other_and_nothing_else(ferryd_factory, namespaces):  # noqa: F811
    ns = namespaces("fr")
    veth(None, f"{CLIENT}/24", ns, f"{RELAY}/24")
    f = ferryd_factory(config(9100), prefix=ns.prefix(), admin_host=RELAY, admin_port=9100)
    server = (RELAY, 3478)
    a = tc.TurnClient(server, "test", "pass", bind=CLIENT)
    b = tc.TurnClient(server, "test", "pass", bind=CLIENT)
    ra, rb = a.allocate(), b.allocate()
    assert ra.ok and rb.ok, (ra.code, rb.code)
    relay_a = ra.addresses(tc.XOR_RELAYED_ADDRESS)[0]
    relay_b = rb.addresses(tc.XOR_RELAYED_ADDRESS)[0]
    assert relay_a[0] == RELAY and relay_b[0] == RELAY

    # Each permits the other's relayed address (the relay's own, in 10.0.0.0/8) and binds a channel.
    assert a.create_permission(RELAY).ok
    assert b.create_permission(RELAY).ok
    assert a.channel_bind(0x4001, *relay_b).ok
    assert b.channel_bind(0x4002, *relay_a).ok
    a.send_raw(channel_data(0x4001, b"from a"))
    assert b.sock.recv(2048) == channel_data(0x4002, b"from a")
    b.send_raw(channel_data(0x4002, b"from b"))
    assert a.sock.recv(2048) == channel_data(0x4001, b"from b")

    # Nothing else on that host: not the TURN listener, not the admin port, not another port.
    for port in (3478, 9100, 22, 49999, 51000):
        assert a.channel_bind(0x4003, RELAY, port).code == 403, port
    # A Send indication to the listener through an existing permission is dropped and counted;
    # had it arrived, the listener would have answered a Binding request.
    binding, _ = tc.encode(tc.BINDING, 0, [])
    denied_before = f.metric("ferry_turn_drops_total", {"reason": "denied_peer"})
    tid = os.urandom(12)
    data, _ = tc.encode(tc.SEND, 1, [(tc.XOR_PEER_ADDRESS, tc.xor_address(RELAY, 3478, tid)), (tc.DATA_ATTR, binding)],
                        tid=tid, fingerprint=False)
    a.send_raw(data)
    wait_until(lambda: f.metric("ferry_turn_drops_total", {"reason": "denied_peer"}) == denied_before + 1,
               what="the Send indication to port 3478 counted as denied_peer")
    assert (f.metric("ferry_stun_requests_total", {"method": "binding", "result": "ok"}) or 0) == 0
    # Nor the rest of that private network (the clients' own host here).
    assert a.create_permission(CLIENT).code == 403
    a.close()
    b.close()


# --- The relay's own address reaches only live allocations' ports (the SSRF issue) -----------
# ferryd relays from 127.0.0.1 and ::1 with the default policy of a config file (loopback denied).
# A socket that is not ferryd's listens on both at a port inside the relay range: a client with
# credentials must not reach it, over UDP, TCP or TLS, by ChannelBind + ChannelData or by Send.

PORT_MIN, PORT_MAX = 61000, 61999
STRANGER_PORT = 61777      # in the second worker's block (61500-61999)


def loopback_config(udp, tcp, tls, cert):
    return f"""
[server]
workers = 2
drain_seconds = 1
[turn]
realm = "ferry.test"
relay_ipv4 = "127.0.0.1"
relay_ipv6 = "::1"
port_min = {PORT_MIN}
port_max = {PORT_MAX}
[[turn.user]]
name = "test"
password = "pass"
[tls]
[[tls.certificate]]
certificate = "{cert[0]}"
key = "{cert[1]}"
""" + turn_listeners(udp=udp, tcp=tcp, tls=tls)


class Stranger:
    """A UDP socket of another process on the relay's address (the host's resolver, say)."""

    def __init__(self, family, port):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", port))
        self.sock.settimeout(0.3)

    def received(self):
        got = []
        try:
            while True:
                got.append(self.sock.recv(2048))
        except socket.timeout:
            return got


@pytest.fixture
def loopback_relay(ferryd_factory, tmpdir_path):
    strangers = {fam: Stranger(fam, STRANGER_PORT) for fam in (socket.AF_INET, socket.AF_INET6)}
    udp, tcp, tls = free_port(), free_port(), free_port()
    f = ferryd_factory(loopback_config(udp, tcp, tls, make_cert(tmpdir_path, "a.test")))
    f.udp, f.tcp, f.tls, f.strangers = udp, tcp, tls, strangers
    yield f
    for s in strangers.values():
        s.sock.close()


def client(f, transport):
    if transport == "udp":
        return tc.TurnClient(("127.0.0.1", f.udp), "test", "pass")
    raw = socket.create_connection(("127.0.0.1", f.tcp if transport == "tcp" else f.tls), timeout=2)
    if transport == "tls":
        raw = tc.insecure_client_context().wrap_socket(raw, server_hostname="a.test")
    return tc.StreamTurnClient(raw, "test", "pass")


def send(c, data):
    """Raw bytes to the server; over a stream, ChannelData is padded to four bytes (RFC 8656 §12.5)."""
    if isinstance(c, tc.StreamTurnClient):
        c.sock.sendall(data + b"\0" * (-len(data) % 4))
    else:
        c.send_raw(data)


def send_indication(c, ip, port, payload):
    tid = os.urandom(12)
    data, _ = tc.encode(tc.SEND, 1, [(tc.XOR_PEER_ADDRESS, tc.xor_address(ip, port, tid)), (tc.DATA_ATTR, payload)],
                        tid=tid, fingerprint=False)
    send(c, data)


def allocate(c, family):
    extra = [] if family == socket.AF_INET else [(tc.REQUESTED_ADDRESS_FAMILY, b"\x02\0\0\0")]
    r = c.allocate(extra)
    assert r.ok, r.code
    return r.addresses(tc.XOR_RELAYED_ADDRESS)[0]


def denied(f):
    return f.metric("ferry_turn_drops_total", {"reason": "denied_peer"}) or 0


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_a_client_cannot_reach_another_socket_on_the_relay_address(loopback_relay, transport, family):
    f = loopback_relay
    own = "127.0.0.1" if family == socket.AF_INET else "::1"
    c = client(f, transport)
    relayed = allocate(c, family)
    assert relayed[0] == own
    # Permissions have no port: one for the relay's own address is granted (peers relayed here).
    assert c.create_permission(own).ok
    before = denied(f)
    assert c.channel_bind(0x4001, own, STRANGER_PORT).code == 403
    send_indication(c, own, STRANGER_PORT, b"injected by send")
    # Nor any other port this ferryd does not hold, inside or outside the range.
    for port in {PORT_MIN, PORT_MAX, 53} - {relayed[1]}:
        assert c.channel_bind(0x4002, own, port).code == 403, port
    wait_until(lambda: denied(f) >= before + 4, what=lambda: f"denied_peer {denied(f)} (was {before})")
    assert f.strangers[family].received() == []
    c.close()


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_a_deleted_allocations_port_is_refused_at_once(loopback_relay, transport, family):
    """A channel and a permission to another allocation's port outlive that allocation; its port
    must not: once deleted, the kernel may give it to any process (here: a socket bound to it)."""
    f = loopback_relay
    a, b = client(f, transport), tc.TurnClient(("127.0.0.1", f.udp), "test", "pass", family=socket.AF_INET)
    allocate(a, family)
    rb = allocate(b, family)
    assert b.create_permission(rb[0]).ok
    assert a.channel_bind(0x4001, *rb).ok
    send(a, channel_data(0x4001, b"while live"))
    assert tc.Response(b.sock.recv(2048)).attrs[tc.DATA_ATTR] == [b"while live"]   # a Data indication
    assert b.refresh(0).ok
    b.close()
    taker = Stranger(family, rb[1])          # another process takes the freed port
    before = denied(f)
    send(a, channel_data(0x4001, b"after delete"))
    send_indication(a, *rb, b"after delete by send")
    assert a.channel_bind(0x4001, *rb).code == 403
    wait_until(lambda: denied(f) >= before + 3, what=lambda: f"denied_peer {denied(f)} (was {before})")
    assert taker.received() == []
    taker.sock.close()
    a.close()


def test_allocations_on_different_workers_reach_each_other(loopback_relay):
    """Each worker relays from its own block of the range; two allocations on different workers
    still reach each other over ChannelData and Send, both ways."""
    f = loopback_relay
    by_block = {}
    clients = []
    for _ in range(16):
        c = tc.TurnClient(("127.0.0.1", f.udp), "test", "pass")
        clients.append(c)
        relayed = allocate(c, socket.AF_INET)
        by_block.setdefault(relayed[1] >= 61500, (c, relayed))
        if len(by_block) == 2:
            break
    assert len(by_block) == 2, "every allocation landed on one worker"
    (a, ra), (b, rb) = by_block[False], by_block[True]
    assert a.create_permission("127.0.0.1").ok and b.create_permission("127.0.0.1").ok
    assert a.channel_bind(0x4001, *rb).ok and b.channel_bind(0x4002, *ra).ok
    a.send_raw(channel_data(0x4001, b"from a"))
    assert b.sock.recv(2048) == channel_data(0x4002, b"from a")
    b.send_raw(channel_data(0x4002, b"from b"))
    assert a.sock.recv(2048) == channel_data(0x4001, b"from b")
    send_indication(a, *rb, b"by send")
    assert b.sock.recv(2048) == channel_data(0x4002, b"by send")
    for c in clients:
        c.close()


def test_overlap_with_the_ephemeral_range_is_warned_at_start_and_on_reload(ferryd_factory, tmpdir_path):
    with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
        lo, hi = (int(x) for x in fh.read().split())
    udp = free_port()
    inside = f"""
[turn]
realm = "ferry.test"
relay_ipv4 = "127.0.0.1"
port_min = {lo}
port_max = {lo + 99}
[[turn.user]]
name = "test"
password = "pass"
""" + listener("turn-udp", udp)
    f = ferryd_factory(inside)
    wait_until(lambda: "overlaps the kernel's ephemeral ports" in f.output(), what=f.output)
    line = next(l for l in f.output().splitlines() if "overlaps the kernel's ephemeral ports" in l)
    assert f"relay_ports={lo}-{lo + 99}" in line and f"ip_local_port_range={lo}-{hi}" in line, line
    assert "net.ipv4.ip_local_port_range" in line
    f.signal(signal.SIGHUP)
    wait_until(lambda: f.output().count("overlaps the kernel's ephemeral ports") == 2, what=f.output)
    f.stop()
    if hi < 65000:
        apart = inside.replace(f"port_min = {lo}\nport_max = {lo + 99}", f"port_min = {hi + 1}\nport_max = {hi + 100}")
        g = ferryd_factory(apart)
        assert "overlaps the kernel's ephemeral ports" not in g.output()
