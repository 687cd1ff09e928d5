"""Two peers that both fall back to one relay send to each other's relayed addresses. On a VPC or
CGNAT deployment those sit in a default-denied block; the relay's own relayed addresses are
permitted as peers on the relay port range, and nothing else on that host or network is."""
import os
import struct

import turnclient as tc
from conftest import listener, wait_until
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
