"""`ferry tunnel` delivers every packet it carries byte for byte, over each relay transport and
directly, under bursts: numbered payloads with a digest, of a run of equal sizes (the shape of a
bulk WireGuard flow, which the agent sends as GSO trains) and of mixed sizes. Two agents with
`--peer` endpoints (no WireGuard) on loopback, ferryd handing out one TURN URL."""
import hashlib
import socket
import struct

import pytest

from conftest import LoopbackAgents, free_port, loopback_signal_config


def udp_receive_errors():
    """The kernel's count of datagrams dropped because a socket's receive buffer was full."""
    with open("/proc/net/snmp") as fh:
        names, values = [line.split() for line in fh if line.startswith("Udp:")][:2]
    return int(values[names.index("RcvbufErrors")])

SECRET = "integrity-token-secret-0123"


def payload(seq, size):
    head = struct.pack("!I", seq) + bytes([seq & 0xFF]) * (size - 4 - 16)
    return head + hashlib.md5(head).digest()


def intact(data):
    return len(data) >= 20 and hashlib.md5(data[:-16]).digest() == data[-16:]


@pytest.fixture
def agents(ferryd_factory, tmpdir_path, request):
    path, transport = request.param
    port = free_port()
    f = ferryd_factory(loopback_signal_config(port, SECRET, "integrity-rest-secret-0123456789", transport))
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for s in sinks:
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.settimeout(2)
    agents = LoopbackAgents(tmpdir_path, port, SECRET, sinks, relay_only=path == "relayed")
    try:
        yield f, sinks, agents.wait(path, None if path == "direct" else transport)
    finally:
        agents.close()
        for s in sinks:
            s.close()


def burst(sender, to, receiver, sizes, first_seq):
    """Sends one payload per size, then reads them: (received intact, received altered)."""
    sent = {}
    for k, size in enumerate(sizes):
        data = payload(first_seq + k, size)
        sent[first_seq + k] = data
        sender.sendto(data, to)
    received, corrupt = 0, 0
    receiver.settimeout(1)
    try:
        # Until every payload is accounted for, or a second passes with nothing (a loss).
        while received + corrupt < len(sizes):
            data, _ = receiver.recvfrom(65536)
            seq = struct.unpack("!I", data[:4])[0] if len(data) >= 4 else -1
            if sent.get(seq) == data:
                received += 1
            else:
                corrupt += 1
    except socket.timeout:
        pass
    return received, corrupt


@pytest.mark.parametrize("agents", [("relayed", "udp"), ("relayed", "tcp"), ("direct", "udp")],
                         ids=["relayed-udp", "relayed-tcp", "direct"], indirect=True)
def test_every_packet_arrives_intact_under_bursts(agents):
    f, (x, y), (a_local, b_local) = agents
    kernel_drops = udp_receive_errors()
    total_sent, total_received = 0, 0
    seq = 0
    for rnd in range(6):
        # Runs of equal sizes (trains) and mixed sizes; 300 packets of ~1 KB is more than the
        # agent's 128 KB stream buffer, so TCP reads end inside a frame.
        sizes = [1200] * 150 + [(200 + 37 * k) % 1400 + 24 for k in range(150)] if rnd % 2 == 0 else [1000] * 300
        for sender, to, receiver in ((x, a_local, y), (y, b_local, x)):
            got, corrupt = burst(sender, to, receiver, sizes, seq)
            assert corrupt == 0, f"{corrupt} packets arrived altered (round {rnd})"
            seq += len(sizes)
            total_sent += len(sizes)
            total_received += got
    # Nothing may be altered, and what is lost must be counted: by ferryd when a client's stream
    # queue is full (TCP: the agent reads slower than the burst comes), or by the kernel when a
    # socket's receive buffer is (UDP; the agent's are 4 MiB, so not those). The bulk arrives.
    lost = total_sent - total_received
    counted = (f.metric("ferry_turn_drops_total", {"reason": "buffer_full"}) or 0) + udp_receive_errors() - kernel_drops
    assert lost <= counted, f"{lost} packets lost, {counted} drops counted"
    assert total_received >= 0.9 * total_sent, (total_received, total_sent)
