"""`ferry tunnel` delivers every packet it carries byte for byte, over each relay transport and
directly, under bursts: numbered payloads with a digest, of a run of equal sizes (the shape of a
bulk WireGuard flow, which the agent sends as GSO trains) and of mixed sizes. Two agents with
`--peer` endpoints (no WireGuard) on loopback, ferryd handing out one TURN URL."""
import hashlib
import json
import os
import socket
import struct
import subprocess

import pytest

from conftest import binary, free_port, listener, turn_base, wait_until


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
    base = turn_base(workers=1).replace('relay_ipv4 = "127.0.0.1"\n', 'relay_ipv4 = "127.0.0.1"\nstatic_auth_secrets = ["integrity-rest-secret-0123456789"]\n')
    f = ferryd_factory(base + f"""
[signal]
enabled = true
allow_plaintext = true
token_secrets = ["{SECRET}"]
self_relay_urls = ["turn:127.0.0.1:{port}?transport={transport}"]
""" + listener("turn-udp", port) + listener("turn-tcp", port, "tcp"))
    ferry = binary("ferry")
    keys, pubs = [], []
    for name in ("a", "b"):
        key = os.path.join(tmpdir_path, f"{name}.key")
        pubs.append(subprocess.run([ferry, "keygen", "--out", key], capture_output=True, text=True, check=True).stdout.strip())
        keys.append(key)
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for s in sinks:
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.settimeout(2)
    procs = []
    for me, other in ((0, 1), (1, 0)):
        token = subprocess.run([ferry, "token", "--secret", SECRET, "--network", "n", "--peer", pubs[me]],
                               capture_output=True, text=True, check=True).stdout.strip()
        status = os.path.join(tmpdir_path, f"status{me}.json")
        args = [ferry, "tunnel", "run", "--key", keys[me], "--peer", f"{pubs[other]}=127.0.0.1:{sinks[me].getsockname()[1]}",
                "--signal", f"ws://127.0.0.1:{port}/v1/signal", "--token", token, "--status-file", status]
        procs.append((subprocess.Popen(args + (["--relay-only"] if path == "relayed" else []), stdout=open(status + ".log", "w"),
                                       stderr=subprocess.STDOUT), status))

    def state(status):
        with open(status) as fh:
            s = json.load(fh)
        p = s["peers"][0]
        ok = p["path"] == path and (path == "direct" or s["relay"].startswith(transport))
        return ok and ("127.0.0.1", int(p["local_endpoint"].split(":")[1]))

    def logs():
        return "".join(open(status + ".log").read() for _, status in procs)
    try:
        local = [wait_until(lambda s=status: state(s), timeout=15, ignore=(OSError, ValueError, KeyError), what=logs) for _, status in procs]
        yield f, sinks, local
    finally:
        for p, _ in procs:
            p.terminate()
            p.wait(5)
        for s in sinks:
            s.close()


def burst(sender, to, receiver, sizes, first_seq):
    """Sends one payload per size, then reads until quiet: (received, corrupt, unknown)."""
    sent = {}
    for k, size in enumerate(sizes):
        data = payload(first_seq + k, size)
        sent[first_seq + k] = data
        sender.sendto(data, to)
    received, corrupt = 0, 0
    receiver.settimeout(1)
    try:
        while True:
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
