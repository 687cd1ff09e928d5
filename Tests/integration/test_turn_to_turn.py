"""TURN to TURN inside ferryd (`turn.short_circuit`, docs/turn.md): two allocations that send to
each other's relayed addresses are delivered inside ferryd, not through two relayed sockets and
the kernel: on one worker from the batch, across workers in a batch handed over. What arrives is
what the kernel's path delivers, and it is checked as if it had crossed the network: the
receiver's permission, the sender's channel and the peer address it sees."""
import socket
import struct

import turnclient as tc
from conftest import free_port, wait_until
from test_turn import run_uclient, turn_config


def one_worker(ferryd_factory, short_circuit=True):
    port = free_port(socket.SOCK_DGRAM)
    extra = "" if short_circuit else "short_circuit = false"
    f = ferryd_factory(turn_config(port, extra_turn=extra).replace("workers = 2", "workers = 1"))
    f.port = port
    return f


def short_circuited(f):
    return f.metric("ferry_turn_short_circuit_packets_total") or 0


def channel_data(number, payload):
    return struct.pack("!HH", number, len(payload)) + payload


def pair(f):
    a, b = tc.TurnClient(("127.0.0.1", f.port), "test", "pass"), tc.TurnClient(("127.0.0.1", f.port), "test", "pass")
    ra, rb = a.allocate(), b.allocate()
    assert ra.ok and rb.ok
    return a, b, ra.addresses(tc.XOR_RELAYED_ADDRESS)[0], rb.addresses(tc.XOR_RELAYED_ADDRESS)[0]


def send_indication(c, ip, port, payload):
    tid = bytes(12)
    data, _ = tc.encode(tc.SEND, 1, [(tc.XOR_PEER_ADDRESS, tc.xor_address(ip, port, tid)), (tc.DATA_ATTR, payload)],
                        tid=tid, fingerprint=False)
    c.send_raw(data)


PORTS = "port_min = 50000\nport_max = 50999"  # worker 0 relays from 50000–50499, worker 1 from 50500


def two_workers(ferryd_factory, short_circuit=True, extra_turn="", extra=""):
    port = free_port(socket.SOCK_DGRAM)
    turn = PORTS + "\n" + extra_turn + ("" if short_circuit else "\nshort_circuit = false")
    f = ferryd_factory(turn_config(port, extra_turn=turn, extra=extra))
    f.port = port
    return f


def cross_pair(f):
    """Two allocations on different workers (the relayed port's block says which), made from
    new client ports until SO_REUSEPORT's hash has put one on each."""
    held = {}
    for _ in range(40):
        c = tc.TurnClient(("127.0.0.1", f.port), "test", "pass")
        r = c.allocate()
        assert r.ok
        relayed = r.addresses(tc.XOR_RELAYED_ADDRESS)[0]
        w = (relayed[1] - 50000) // 500
        if w in held:
            c.close()
            continue
        held[w] = (c, relayed)
        if len(held) == 2:
            return held[0][0], held[1][0], held[0][1], held[1][1]
    raise AssertionError("every allocation landed on one worker")


def exchange(f, make=pair):
    """What b receives from a: ChannelData both ways, a Send, and ChannelData to a b with no
    channel back (a Data indication)."""
    a, b, ra, rb = make(f)
    assert a.create_permission("127.0.0.1").ok and b.create_permission("127.0.0.1").ok
    got = []
    # a → b before b has a channel: a Data indication naming a's relayed address.
    assert a.channel_bind(0x4001, *rb).ok
    a.send_raw(channel_data(0x4001, b"no channel back"))
    m = tc.Response(b.sock.recv(2048))
    got.append(("indication", m.attrs[tc.DATA_ATTR], m.addresses(tc.XOR_PEER_ADDRESS)))
    assert b.channel_bind(0x4002, *ra).ok
    for size in (0, 1, 100, 1200):
        payload = bytes(range(256)) * 5
        a.send_raw(channel_data(0x4001, payload[:size]))
        got.append(("channel", b.sock.recv(2048)))
        b.send_raw(channel_data(0x4002, payload[:size]))
        got.append(("channel back", a.sock.recv(2048)))
    send_indication(a, *rb, b"by send")
    got.append(("send", b.sock.recv(2048)))
    a.close()
    b.close()
    return got, ra, rb


def same_as_the_kernels_path(inside, got, ra, kernel, make):
    """`got` (from `inside`, a's relayed address `ra`) against what `kernel` (short_circuit off)
    delivers for the same exchange between allocations made by `make`: byte for byte, the peer
    address the receiver sees being the sender's relayed address on each; counted alike."""
    through, ka, kb = exchange(kernel, make)
    assert short_circuited(kernel) == 0
    assert got[0] == ("indication", [b"no channel back"], [ra]) and through[0][2] == [ka]
    assert got[1:] == through[1:], "byte for byte what the kernel's path delivers"
    assert got[-1] == ("send", channel_data(0x4002, b"by send"))
    for f in (inside, kernel):
        assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_client"}) == 10
        assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_peer"}) == 10


def test_allocations_of_one_worker_reach_each_other_inside_ferryd_as_through_the_kernel(ferryd_factory):
    inside = one_worker(ferryd_factory)
    got, ra, rb = exchange(inside)
    # ChannelData both ways (4 + 4) and the Send go inside; ChannelData to a receiver with no
    # channel back needs a Data indication's room and takes the kernel's path.
    assert short_circuited(inside) == 9
    same_as_the_kernels_path(inside, got, ra, one_worker(ferryd_factory, short_circuit=False), pair)


def refused_for_want_of_permission(f, a, b, rb, by_send=False):
    """a sends to b's relayed address `rb` by its channel (and by a Send) while b never allowed
    a: counted as no_permission, nothing reaches b, nothing was short-circuited."""
    assert a.create_permission("127.0.0.1").ok
    assert a.channel_bind(0x4001, *rb).ok
    before = f.metric("ferry_turn_drops_total", {"reason": "no_permission"}) or 0
    a.send_raw(channel_data(0x4001, b"b never allowed a"))
    if by_send:
        send_indication(a, *rb, b"nor by send")
    wait_until(lambda: f.metric("ferry_turn_drops_total", {"reason": "no_permission"}) == before + 1 + by_send)
    b.sock.settimeout(0.3)
    try:
        assert b.sock.recv(2048) is None, "b has no permission for a's relayed address"
    except socket.timeout:
        pass
    assert short_circuited(f) == 0


def test_the_receivers_permission_is_checked_as_if_the_datagram_had_crossed(ferryd_factory):
    f = one_worker(ferryd_factory)
    a, b, ra, rb = pair(f)
    refused_for_want_of_permission(f, a, b, rb, by_send=True)
    # Once b allows it, the same datagram arrives, from a's relayed address.
    assert b.create_permission("127.0.0.1").ok
    send_indication(a, *rb, b"now allowed")
    b.sock.settimeout(2)
    m = tc.Response(b.sock.recv(2048))
    assert m.attrs[tc.DATA_ATTR] == [b"now allowed"] and m.addresses(tc.XOR_PEER_ADDRESS) == [ra]
    assert short_circuited(f) == 1
    a.close()
    b.close()


def test_coturns_client_to_client_mode_goes_inside_ferryd(ferryd_factory):
    """turnutils_uclient -y: its clients allocate and send to each other's relayed addresses."""
    f = one_worker(ferryd_factory)
    lost, out = run_uclient(["-y", "-p", str(f.port), "-u", "test", "-w", "pass", "-n", "200", "-m", "4", "-l", "1200",
                             "-z", "5", "127.0.0.1"])
    assert lost == 0, out[-2000:]
    assert short_circuited(f) >= 4 * 200, out[-1000:]


def test_allocations_on_two_workers_reach_each_other_in_a_handed_over_batch(ferryd_factory):
    inside = two_workers(ferryd_factory)
    got, ra, rb = exchange(inside, cross_pair)
    # All ten, the one to a receiver with no channel back too: the record has a Data
    # indication's room in front of the payload.
    assert short_circuited(inside) == 10
    same_as_the_kernels_path(inside, got, ra, two_workers(ferryd_factory, short_circuit=False), cross_pair)


def test_across_workers_the_receivers_permission_is_checked_on_its_worker(ferryd_factory):
    f = two_workers(ferryd_factory)
    a, b, ra, rb = cross_pair(f)
    refused_for_want_of_permission(f, a, b, rb)
    # b's allocation ends: its port is no longer a live allocation's, nothing is handed over.
    b.refresh(0)
    a.send_raw(channel_data(0x4001, b"to nobody"))
    try:
        assert b.sock.recv(2048) is None
    except socket.timeout:
        pass
    assert short_circuited(f) == 0
    a.close()
    b.close()


def test_another_programs_socket_in_the_relayed_range_is_reached_through_the_kernel(ferryd_factory):
    """A socket of another program on the relay's address, at a port of a worker's block that no
    allocation holds, is a peer like any other: handed to no worker (this once dropped what
    coturn's client sent to a peer on the relay's host)."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 50999))
    sink.settimeout(2)
    f = two_workers(ferryd_factory)
    for _ in range(8):  # from allocations on both workers, whichever the hash picks
        c = tc.TurnClient(("127.0.0.1", f.port), "test", "pass")
        assert c.allocate().ok and c.create_permission("127.0.0.1").ok
        assert c.channel_bind(0x4001, "127.0.0.1", 50999).ok
        c.send_raw(channel_data(0x4001, b"to the sink"))
        assert sink.recv(100) == b"to the sink"
        c.close()
    assert short_circuited(f) == 0
    sink.close()


def test_past_the_handoff_budget_a_datagram_takes_the_kernels_path(ferryd_factory):
    """turn.short_circuit_handoff_bytes at its least (64 KiB): the record of a 65,482-byte payload
    (56 bytes of head in front: 65,540) does not fit, so it crosses through the kernel instead,
    whole, and is counted. (65,483 is the most a relayed socket takes: room for a Data
    indication's header within 16 bits.)"""
    f = two_workers(ferryd_factory, extra_turn="short_circuit_handoff_bytes = 65536",
                    extra="[engine]\nmax_datagram = 65535")
    a, b, ra, rb = cross_pair(f)
    for c in (a, b):
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        assert c.create_permission("127.0.0.1").ok
    assert a.channel_bind(0x4001, *rb).ok and b.channel_bind(0x4002, *ra).ok
    small, big = b"fits", bytes(range(256)) * 255 + bytes(202)
    a.send_raw(channel_data(0x4001, small))
    assert b.sock.recv(70000) == channel_data(0x4002, small)
    assert short_circuited(f) == 1
    a.send_raw(channel_data(0x4001, big))
    assert b.sock.recv(70000) == channel_data(0x4002, big)
    assert short_circuited(f) == 1
    assert f.metric("ferry_turn_short_circuit_handoff_full_total") == 1
    a.close()
    b.close()
