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
from conftest import ROOT, UNDER_ASAN, free_port, listener, turn_base, wait_until

PACKETS = 20000


@pytest.fixture
def counting_preload(tmpdir_path):
    lib = os.path.join(tmpdir_path, "libcount.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", lib, os.path.join(ROOT, "Benchmarks", "allocations", "count.c")],
                   check=True)
    return lib


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

    def relay_both_ways(n, chunk=100):
        # In chunks a receive buffer holds (loopback drops what overflows one, not ferryd).
        for _ in range(n // chunk):
            for _ in range(chunk):
                client.send_raw(channel_data)
            for _ in range(chunk):
                peer.recvfrom(2048)
            for _ in range(chunk):
                peer.sendto(b"y" * 100, tuple(relay))
            for _ in range(chunk):
                client.sock.recv(2048)

    # Warm up: first-use growth (hash tables, batch histograms, socket buffers) is not per packet.
    relay_both_ways(2000)
    wait_until(lambda: f.metric("ferry_turn_relayed_packets_total", {"direction": "to_client"}) >= 2000)

    idle_start = read_count(counter)
    started = time.monotonic()
    relay_both_ways(PACKETS)
    busy = read_count(counter) - idle_start
    took = time.monotonic() - started
    # The same time spent idle: what the process allocates anyway (sweeps, timers).
    before = read_count(counter)
    time.sleep(took)
    idle = read_count(counter) - before

    relayed = 2 * PACKETS
    per_packet = max(0, busy - idle) / relayed
    print(f"\nallocations: {busy} while relaying {relayed} packets in {took:.2f} s, {idle} idle for as long: "
          f"{per_packet:.4f} per packet")
    assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_peer"}) >= PACKETS + 2000
    # Zero per packet: a single allocation per packet would add 40,000; allow the noise of a sweep.
    assert busy - idle < relayed / 100, (busy, idle)
    client.close()
    peer.close()
