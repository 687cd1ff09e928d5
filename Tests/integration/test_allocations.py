"""The relay path allocates nothing per packet: measured, not asserted in a comment. ferryd runs
with Benchmarks/allocations/count.c preloaded, which counts every heap allocation of the process
into a shared counter; the test relays thousands of ChannelData packets each way through a real
allocation and compares the count before and after with the same time spent idle. Background
work (the once-a-second sweep, timers) allocates a little whatever the traffic; per packet the
count must be zero."""
import os
import socket
import struct
import subprocess
import time

import pytest

import turnclient as tc
from conftest import ROOT, UNDER_ASAN, LoopbackAgents, free_port, listener, loopback_signal_config, turn_base, wait_until

PACKETS = 20000


@pytest.fixture
def counting_preload(tmpdir_path):
    lib = os.path.join(tmpdir_path, "libcount.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", lib, os.path.join(ROOT, "Benchmarks", "allocations", "count.c")],
                   check=True)
    return lib


def both_ways(n, out_a, in_b, out_b, in_a, chunk=100):
    """n packets from A to B and n back, in chunks a receive buffer holds (loopback drops what
    overflows one, not the process under test)."""
    for _ in range(n // chunk):
        for step in (out_a, in_b, out_b, in_a):
            for _ in range(chunk):
                step()


def busy_and_idle(counter, work):
    """Allocations counted while `work()` runs, and while the process sits idle for as long
    (what it allocates anyway: sweeps, timers); and how long that was."""
    start = read_count(counter)
    started = time.monotonic()
    work()
    busy = read_count(counter) - start
    took = time.monotonic() - started
    before = read_count(counter)
    time.sleep(took)
    return busy, read_count(counter) - before, took


def read_count(path):
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


@pytest.mark.skipif(UNDER_ASAN, reason="ASan must come first in the library list; it counts its own way")
def test_relaying_allocates_nothing_per_packet(ferryd_factory, tmpdir_path, counting_preload):
    port = free_port(socket.SOCK_DGRAM)
    counter = os.path.join(tmpdir_path, "allocations")
    f = ferryd_factory(turn_base(workers=1) + listener("turn-udp", port), env={"LD_PRELOAD": counting_preload, "FERRY_ALLOC_COUNTER": counter})
    assert read_count(counter) > 0, "the preload counts (ferryd allocated at start)"

    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2)
    peer_port = peer.getsockname()[1]
    client = tc.TurnClient(("127.0.0.1", port), "test", "pass")
    r = client.allocate()
    assert r.ok, r.code
    relay = r.addresses(tc.XOR_RELAYED_ADDRESS)[0]
    assert client.channel_bind(0x4000, "127.0.0.1", peer_port).ok
    channel_data = struct.pack("!HH", 0x4000, 100) + b"x" * 100
    client.sock.settimeout(2)

    def relay_both_ways(n):
        both_ways(n, lambda: client.send_raw(channel_data), lambda: peer.recvfrom(2048),
                  lambda: peer.sendto(b"y" * 100, tuple(relay)), lambda: client.sock.recv(2048))

    # Warm up: first-use growth (hash tables, batch histograms, socket buffers) is not per packet.
    relay_both_ways(2000)
    wait_until(lambda: f.metric("ferry_turn_relayed_packets_total", {"direction": "to_client"}) >= 2000)

    busy, idle, took = busy_and_idle(counter, lambda: relay_both_ways(PACKETS))

    relayed = 2 * PACKETS
    per_packet = max(0, busy - idle) / relayed
    print(f"\nallocations: {busy} while relaying {relayed} packets in {took:.2f} s, {idle} idle for as long: "
          f"{per_packet:.4f} per packet")
    assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_peer"}) >= PACKETS + 2000
    # Zero per packet: a single allocation per packet would add 40,000; allow the noise of a sweep.
    assert busy - idle < relayed / 100, (busy, idle)
    client.close()
    peer.close()


@pytest.mark.skipif(UNDER_ASAN, reason="ASan must come first in the library list; it counts its own way")
@pytest.mark.parametrize("relay_only", [False, True], ids=["direct", "relayed"])
def test_the_tunnel_agent_allocates_nothing_per_packet(ferryd_factory, tmpdir_path, counting_preload, relay_only):
    """`ferry tunnel` carries packets between a local endpoint and its path (direct, or ChannelData
    through the relay written in place) without a heap allocation per packet."""
    port = free_port()
    secret = "alloc-token-secret-0123"
    # The welcome hands out relay credentials signed with the first TURN REST secret.
    f = ferryd_factory(loopback_signal_config(port, secret, "alloc-rest-secret-0123456789"))
    x, y = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (x, y):
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
    counter = os.path.join(tmpdir_path, "allocations")
    agents = LoopbackAgents(tmpdir_path, port, secret, (x, y), relay_only,
                            envs=({"LD_PRELOAD": counting_preload, "FERRY_ALLOC_COUNTER": counter}, {}))
    try:
        want = "relayed" if relay_only else "direct"
        a_local, b_local = agents.wait(want)
        payload = b"w" * 120

        def through_agents(n):
            both_ways(n, lambda: x.sendto(payload, a_local), lambda: y.recvfrom(2048),
                      lambda: y.sendto(payload, b_local), lambda: x.recvfrom(2048))

        through_agents(2000)
        # More packets than ferryd's test: the agent's periodic work (consent checks every
        # second, the status file) is larger, and must stay small next to one per packet.
        packets = 3 * PACKETS
        busy, idle, took = busy_and_idle(counter, lambda: through_agents(packets))
        print(f"\nagent allocations ({want}): {busy} carrying {2 * packets} packets in {took:.2f} s, {idle} idle for as long")
        assert busy - idle < 2 * packets / 100, (busy, idle)
        if relay_only:
            assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_client"}) >= 2 * PACKETS
    finally:
        agents.close()
        x.close()
        y.close()
