"""Signaling under hostile and unlucky peers, against the real ferryd: peers that reset in the
middle of a burst, floods at peers that never read, bursts of large offers, and a seeded random
churn of connections on both transports and both workers."""
import asyncio
import json
import os
import random
import re
import socket
import struct
import time

import pytest
import websockets

from conftest import UNDER_ASAN, http_get, wait_until
from test_signal import connect, run, signal_server  # noqa: F401  (the fixture)

OPEN = "allow_plaintext = true\nmessages_per_second = 100000\nmessage_burst = 100000\nbytes_per_second = 1000000000\n"


def alive(f):
    assert f.proc.poll() is None, f"ferryd died:\n{f.output()[-3000:]}"
    assert http_get(f.admin_port, "/healthz")[0] == 200


def reset(peer):
    """Drops a peer's TCP connection with an RST (SO_LINGER 0), as a crashing client would."""
    sock = peer.ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.ws.transport.abort()


def rss_kib(pid):
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))


def test_peer_that_resets_during_a_burst_does_not_take_the_server_down(signal_server):
    """Issue 8 §1: A sends a dozen 15 kB offers to B, B resets after the first; the frames queued
    for B must not be reached after its connection closed. Several pairs, so that sender and
    receiver share a worker in some and not in others."""
    f = signal_server(extra=OPEN)

    async def go():
        for _ in range(6):
            a = await connect(f.url)
            b = await connect(f.url, rcvbuf=4096)
            for i in range(12):
                await a.send(type="offer", to=b.key, payload=f"{i:04d}" + "o" * 15000)
            await b.recv()
            reset(b)
            for i in range(12):
                await a.send(type="offer", to=b.key, payload="after the reset")
            await asyncio.sleep(0.2)
            await a.ws.close()
    run(go())
    alive(f)

    async def still_routes():
        a, b = await connect(f.url), await connect(f.url)
        await a.send(type="offer", to=b.key, payload="hello")
        assert (await b.recv())["payload"] == "hello"
    run(still_routes())
    assert f.metric("ferry_signal_queued_messages") == 0


def test_burst_of_large_offers_is_delivered_at_once(signal_server):
    """Issue 8 §2: 20 offers of 15 kB (inside every limit) are written as fast as the receiver
    reads, not a few per loop wakeup (they took about 4 s before: the sweep's once-a-second
    wakeup moved the queue on). The bound is far above what it takes (a few ms) and far below
    one wakeup interval."""
    f = signal_server(extra=OPEN)

    async def go():
        a, b = await connect(f.url), await connect(f.url)
        worst = 0.0
        for _ in range(3):
            started = time.monotonic()
            for i in range(20):
                await a.send(type="offer", to=b.key, payload=f"{i:04d}" + "o" * 15000)
            for i in range(20):
                assert (await b.recv())["payload"].startswith(f"{i:04d}")
            worst = max(worst, time.monotonic() - started)
        return worst
    worst = run(go())
    print(f"20 x 15 kB burst delivered in {worst * 1000:.1f} ms (worst of 3)")
    assert worst < 0.25, f"{worst:.3f} s"


def test_flood_at_a_peer_that_never_reads_keeps_memory_bounded(signal_server):
    """Issue 8 §1b: dropped messages are freed. 10,000 messages of 4 kB at a peer that reads
    nothing: the queue holds queue_messages of them, the rest are dropped and counted, and the
    server's resident memory stays within a few MiB (it grew ~4 kB per message before)."""
    f = signal_server(extra=OPEN)

    async def go():
        a = await connect(f.url)
        b = await connect(f.url, rcvbuf=4096)
        payload = "f" * 4000
        for i in range(1000):
            await a.send(type="candidate", to=b.key, payload=payload)
        await asyncio.sleep(0.5)
        before = rss_kib(f.proc.pid)
        for i in range(10000):
            await a.send(type="candidate", to=b.key, payload=payload)
        await asyncio.sleep(1)
        after = rss_kib(f.proc.pid)
        queued = f.metric("ferry_signal_queued_messages")
        await a.ws.close()
        reset(b)
        return before, after, queued
    before, after, queued = run(go())
    assert f.metric("ferry_signal_queue_dropped_total") > 9000
    assert queued <= 256
    if not UNDER_ASAN:
        assert after - before < 6 * 1024, f"RSS grew by {(after - before) / 1024:.1f} MiB"
    alive(f)


def test_random_churn_of_peers_leaves_the_server_consistent(signal_server):
    """Issue 8 §1: a seeded random sequence of connects (wss and ws), floods, resets, graceful
    closes and subscriptions; the server stays up and every gauge returns to zero."""
    seed = int(os.environ.get("FERRY_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (FERRY_TEST_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    f = signal_server(extra=OPEN)
    urls = [f.url, f"ws://127.0.0.1:{f.tcp_port}/v1/signal"]

    async def go():
        peers = []
        for step in range(150):
            action = rng.choice(["connect", "connect", "flood", "flood", "flood", "reset", "close", "subscribe"])
            if action == "connect" or len(peers) < 2:
                peers.append(await connect(rng.choice(urls), rcvbuf=rng.choice([None, 4096])))
            elif action == "flood":
                a, b = rng.sample(peers, 2)
                for i in range(rng.randrange(1, 30)):
                    await a.send(type="offer", to=b.key, payload="p" * rng.randrange(1, 15000))
            elif action == "reset":
                reset(peers.pop(rng.randrange(len(peers))))
            elif action == "close":
                p = peers.pop(rng.randrange(len(peers)))
                await p.ws.close()
            elif action == "subscribe":
                a, b = rng.sample(peers, 2)
                await a.send(type="subscribe", peers=[b.key])
        for p in peers:
            if rng.random() < 0.5:
                reset(p)
            else:
                p.ws.transport.abort()
    try:
        run(go())
    except Exception:
        print(f"failed with seed {seed}")
        raise
    alive(f)
    def gauges():
        g = {name: f.metric(name) for name in ("ferry_signal_peers_connected", "ferry_signal_peers_registered",
                                               "ferry_signal_queued_messages")}
        g["tls"] = f.metric("ferry_connections_active", {"transport": "tls"})
        g["tcp"] = f.metric("ferry_connections_active", {"transport": "tcp"})
        return g
    wait_until(lambda: all(v == 0 for v in gauges().values()), interval=0.1, what=lambda: (seed, gauges()))
