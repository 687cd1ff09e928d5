#!/usr/bin/env python3
"""Soak: long mixed load against one ferryd, watching for leaks, lost packets and restarts.

For DURATION seconds (default 30 minutes), all at once:
- TURN clients over UDP, TCP and TLS in a loop: allocate, bind a channel to a sink, send
  ChannelData at a steady rate while the sink echoes every datagram back, wait until every
  echo is home, then delete the allocation (Refresh 0, or on streams sometimes just close).
- Signaling peers over wss: connect and authenticate, subscribe, route offers to each other,
  now and then flood past the rate limit, and leave after a random lifetime.
- Malformed traffic at a low rate: random datagrams, truncated STUN, garbage on TCP and TLS,
  broken HTTP and WebSocket frames.
- SIGHUP every RELOAD_INTERVAL seconds (default 60).
Every SAMPLE_INTERVAL seconds it records ferryd's RSS, open descriptors, TURN allocations,
connections, signaling peers and counters (written as CSV next to the JSON summary).

It fails (exit 1) when, after WARMUP seconds, resident memory grows by more than
max(2 MiB, 3%) between the first and the last tenth of the run; when the descriptors ferryd
holds once idle at the end differ from those it held idle at the start; when a packet ferryd
counted as relayed did not arrive (at the sink for to_peer, at the clients for to_client); when
a reload fails; or when ferryd exits or restarts. Not part of the tests (docs/testing.md).
"""
import argparse
import asyncio
import base64
import csv
import hashlib
import hmac
import json
import os
import random
import select
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "Tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "Benchmarks"))
import turnclient as tc  # noqa: E402
from common import free_tcp_port, free_udp_port, rss_kib  # noqa: E402

SIGNAL_SECRET = "soak-signal-secret-0123456789"
TURN_SECRET = "soak-turn-secret-0123456789"
stop = threading.Event()
lock = threading.Lock()
stats = {"to_peer_sent": 0, "echo_received": 0, "sessions": 0, "session_errors": 0, "sink_received": 0,
         "signal_connected": 0, "signal_routed_received": 0, "signal_errors": {}, "malformed_sent": 0,
         "reloads_sent": 0}


def bump(key, n=1):
    with lock:
        stats[key] += n


def metrics(admin):
    """ferryd's /metrics as {name{labels}: value}, label sets summed when asked by bare name."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
        bare = key.split("{", 1)[0]
        out.setdefault(bare + "{*}", 0.0)
        out[bare + "{*}"] += float(value)
    return out


def config(tmp, ports):
    text = f"""[server]
workers = 2
drain_seconds = 1
[log]
level = "warning"
[admin]
address = "127.0.0.1:{ports['admin']}"
[turn]
realm = "soak"
relay_ipv4 = "127.0.0.1"
static_auth_secrets = ["{TURN_SECRET}"]
[[turn.user]]
name = "soak"
password = "soak-password"
[policy]
allow = ["127.0.0.0/8"]
[tls]
self_signed = true
[stream]
max_connections_per_source = 100000
[signal]
enabled = true
token_secrets = ["{SIGNAL_SECRET}"]
messages_per_second = 50
message_burst = 100
[[listener]]
name = "udp"
address = "127.0.0.1:{ports['udp']}"
[[listener]]
name = "tcp"
transport = "tcp"
address = "127.0.0.1:{ports['tcp']}"
[[listener]]
name = "tls"
transport = "tls"
address = "127.0.0.1:{ports['tls']}"
"""
    path = os.path.join(tmp, "ferry.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


# ---- TURN clients ------------------------------------------------------------------------

class UDPClient(tc.TurnClient):
    def transact(self, data, tid):
        self.sock.sendto(data, self.server)
        while True:
            d = self.sock.recv(65536)
            if d[0] & 0xC0 == 0x40:
                bump("echo_received")  # a late echo still arrived
                continue
            r = tc.Response(d)
            if r.tid == tid:
                return r


class StreamClient(tc.StreamTurnClient):
    def transact(self, data, tid):
        self.sock.sendall(data)
        while True:
            head = self._read_exact(4)
            length = struct.unpack("!H", head[2:4])[0]
            if head[0] & 0xC0 == 0x40:
                self._read_exact((length + 3) & ~3)
                bump("echo_received")  # a late echo still arrived
                continue
            r = tc.Response(head + self._read_exact(16 + length))
            if r.tid == tid:
                return r


def turn_loop(kind, index, ports, sink, rate):
    rnd = random.Random(index)
    channel = 0x4000 + index
    while not stop.is_set():
        user, password = ("soak", "soak-password")
        if rnd.random() < 0.5:  # TURN REST credentials, as NetBird and coturn issue them
            user = f"{int(time.time()) + 600}:peer{index}"
            password = base64.b64encode(hmac.new(TURN_SECRET.encode(), user.encode(), hashlib.sha1).digest()).decode()
        try:
            if kind == "udp":
                c = UDPClient(("127.0.0.1", ports["udp"]), user, password, timeout=5)
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            else:
                s = socket.create_connection(("127.0.0.1", ports[kind]), timeout=5)
                if kind == "tls":
                    s = tc.insecure_client_context().wrap_socket(s)
                c = StreamClient(s, user, password)
            if not c.allocate().ok or not c.channel_bind(channel, "127.0.0.1", sink).ok:
                raise RuntimeError("allocate or bind refused")
            session(c, kind, channel, rnd.randrange(50, 400), rate)
            if kind == "udp" or rnd.random() < 0.7:
                r = c.refresh(0)
                if not r.ok:
                    raise RuntimeError(f"refresh 0 answered {r.code}")
            c.close()
            bump("sessions")
        except Exception as e:  # noqa: BLE001 — counted and reported; the checks decide
            bump("session_errors")
            print(f"soak: {kind} session {index}: {e!r}", file=sys.stderr)
            time.sleep(0.5)


def session(c, kind, channel, packets, rate):
    """Sends `packets` ChannelData messages at `rate`/s, reading echoes, then waits (up to 10 s)
    until every echo has come back (one that comes later is counted by `transact`)."""
    sock = c.sock
    sock.setblocking(False)
    sent = received = 0
    buf = b""
    next_send = time.monotonic()
    deadline = None
    while True:
        now = time.monotonic()
        if sent < packets and now >= next_send:
            payload = struct.pack("!IQ", channel, sent) + bytes(100)
            frame = struct.pack("!HH", channel, len(payload)) + payload
            try:
                if kind == "udp":
                    sock.sendto(frame, c.server)
                else:
                    sock.setblocking(True)
                    sock.sendall(frame)  # 112 bytes: already a multiple of 4
                    sock.setblocking(False)
                sent += 1
                bump("to_peer_sent")
            except BlockingIOError:
                pass
            next_send += 1 / rate
        if sent == packets and deadline is None:
            deadline = now + 10
        if deadline is not None and (received >= sent or now > deadline):
            break
        wait = max(0.0, min(next_send - time.monotonic(), 0.05)) if sent < packets else 0.05
        if kind == "tls" and sock.pending():
            wait = 0
        if wait and not select.select([sock], [], [], wait)[0]:
            continue
        try:
            data = sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError):
            continue
        if kind == "udp":
            if data and data[0] & 0xC0 == 0x40:
                received += 1
                bump("echo_received")
            continue
        if not data:
            raise ConnectionError("closed by ferryd")
        buf += data
        while len(buf) >= 4:
            length = struct.unpack("!H", buf[2:4])[0]
            if buf[0] & 0xC0 == 0x40:
                total = 4 + ((length + 3) & ~3)
                if len(buf) < total:
                    break
                received += 1
                bump("echo_received")
            else:
                total = 20 + length
                if len(buf) < total:
                    break
            buf = buf[total:]
    sock.setblocking(True)
    sock.settimeout(5)


def sink_loop(sock):
    sock.settimeout(0.5)
    while True:
        try:
            data, addr = sock.recvfrom(65536)
        except socket.timeout:
            if stop.is_set():
                return
            continue
        except OSError:
            return
        bump("sink_received")
        sock.sendto(data, addr)  # the echo: relayed back to the client as to_client


# ---- Signaling peers -----------------------------------------------------------------------

def signal_thread(port, seconds_per_peer):
    asyncio.run(signal_main(port, seconds_per_peer))


async def signal_main(port, lifetime):
    import websockets
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    b64 = lambda b: base64.b64encode(b).decode()
    b64url = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    present = {}
    ctx = tc.insecure_client_context()

    def mint(pub):
        payload = b64url(json.dumps({"exp": int(time.time()) + 3600, "net": "soak", "peer": pub}).encode())
        mac = hmac.new(SIGNAL_SECRET.encode(), f"ferry1.{payload}".encode(), hashlib.sha256).digest()
        return f"ferry1.{payload}.{b64url(mac)}"

    async def peer(n):
        priv = X25519PrivateKey.generate()
        pub = priv.public_key().public_bytes_raw()
        key = b64(pub)
        try:
            async with websockets.connect(f"wss://127.0.0.1:{port}/v1/signal", ssl=ctx, open_timeout=10, max_queue=None) as ws:
                hello = json.loads(await ws.recv())
                spub, ch = base64.b64decode(hello["server_key"]), base64.b64decode(hello["challenge"])
                mk = hashlib.sha256(b"ferry-signal-v1" + priv.exchange(X25519PublicKey.from_public_bytes(spub))).digest()
                proof = hmac.new(mk, ch + pub + spub, hashlib.sha256).digest()
                await ws.send(json.dumps({"v": 1, "type": "auth", "peer_key": key, "proof": b64(proof), "token": mint(key)}))
                welcome = json.loads(await ws.recv())
                if welcome.get("type") != "welcome":
                    raise RuntimeError(f"no welcome: {welcome}")
                bump("signal_connected")
                present[key] = ws
                await ws.send(json.dumps({"v": 1, "type": "subscribe", "peers": list(present)[:50]}))

                async def reader():
                    async for m in ws:
                        o = json.loads(m)
                        if o.get("type") == "offer":
                            bump("signal_routed_received")
                        elif o.get("type") == "error":
                            with lock:
                                stats["signal_errors"][o["code"]] = stats["signal_errors"].get(o["code"], 0) + 1
                task = asyncio.create_task(reader())
                end = time.monotonic() + random.uniform(lifetime / 2, lifetime * 1.5)
                flood = random.random() < 0.1
                while time.monotonic() < end and not stop.is_set():
                    others = [k for k in present if k != key]
                    burst = 300 if flood else 1
                    for _ in range(burst):
                        if others:
                            await ws.send(json.dumps({"v": 1, "type": "offer", "to": random.choice(others), "payload": "x" * 200}))
                    flood = False
                    await asyncio.sleep(random.uniform(0.05, 0.3))
                present.pop(key, None)
                task.cancel()
        except Exception as e:  # noqa: BLE001
            present.pop(key, None)
            with lock:
                stats["signal_errors"]["client:" + type(e).__name__] = stats["signal_errors"].get("client:" + type(e).__name__, 0) + 1

    tasks = set()
    n = 0
    while not stop.is_set():
        if len(tasks) < 20:
            t = asyncio.create_task(peer(n))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            n += 1
        await asyncio.sleep(0.3)
    if tasks:
        await asyncio.wait(tasks, timeout=15)


# ---- Malformed traffic and reloads ---------------------------------------------------------

def malformed_loop(ports, per_second):
    rnd = random.Random(7)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    good = tc.encode(tc.BINDING, 0, [])[0]
    while not stop.wait(1 / per_second):
        kind = rnd.randrange(6)
        try:
            if kind == 0:
                udp.sendto(rnd.randbytes(rnd.randrange(1, 600)), ("127.0.0.1", ports["udp"]))
            elif kind == 1:
                udp.sendto(good[:rnd.randrange(1, len(good))] + rnd.randbytes(rnd.randrange(0, 8)), ("127.0.0.1", ports["udp"]))
            elif kind == 2:
                with socket.create_connection(("127.0.0.1", ports["tcp"]), timeout=2) as s:
                    s.sendall(rnd.randbytes(rnd.randrange(1, 300)))
            elif kind == 3:
                with socket.create_connection(("127.0.0.1", ports["tls"]), timeout=2) as s:
                    s.sendall(b"\x16\x03\x01\x02\x00" + rnd.randbytes(100))
            elif kind == 4:
                with tc.insecure_client_context().wrap_socket(socket.create_connection(("127.0.0.1", ports["tls"]), timeout=2)) as s:
                    s.sendall(b"GET /v1/signal HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                    s.recv(1024)
            else:
                with tc.insecure_client_context().wrap_socket(socket.create_connection(("127.0.0.1", ports["tls"]), timeout=2)) as s:
                    s.sendall(b"GET /v1/signal HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                    s.recv(1024)
                    s.sendall(bytes([0x81, 0x7F]) + struct.pack("!Q", 1 << 40) + rnd.randbytes(20))  # oversized, unmasked
                    s.recv(1024)
            bump("malformed_sent")
        except OSError:
            bump("malformed_sent")


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid):
    """What each descriptor is (socket:[inode], pipe, anon_inode:[eventpoll], a path), sorted."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return sorted(out)


def settled_fds(pid):
    """Descriptors once ferryd is idle: the last scrape's connection may still be closing."""
    time.sleep(1)
    return fd_targets(pid)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ferryd", required=True)
    ap.add_argument("--duration", type=float, default=1800)
    ap.add_argument("--warmup", type=float, default=None, help="seconds before memory is judged (default: a sixth of the run)")
    ap.add_argument("--reload-interval", type=float, default=60)
    ap.add_argument("--sample-interval", type=float, default=5)
    ap.add_argument("--rate", type=float, default=100, help="ChannelData messages/s per TURN client")
    ap.add_argument("--clients", type=int, default=2, help="TURN clients per transport")
    ap.add_argument("--malformed-per-second", type=float, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "Benchmarks", "out"))
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else args.duration / 6
    ports = {"admin": free_tcp_port(), "udp": free_udp_port(), "tcp": free_tcp_port(), "tls": free_tcp_port()}
    tmp = tempfile.mkdtemp(prefix="ferry-soak-")
    proc = subprocess.Popen([args.ferryd, "--config", config(tmp, ports)], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, "ferryd.log"), "w"))
    for _ in range(100):
        try:
            if metrics(ports["admin"]).get("ferry_ready", 0) == 1:
                break
        except OSError:
            pass
        time.sleep(0.1)
    start_metrics = metrics(ports["admin"])
    idle_start = settled_fds(proc.pid)
    idle_fds_start = len(idle_start)
    started = start_metrics["ferry_start_time_seconds"]

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sink.bind(("127.0.0.1", 0))
    threads = [threading.Thread(target=sink_loop, args=(sink,), daemon=True)]
    i = 0
    for kind in ("udp", "tcp", "tls"):
        for _ in range(args.clients):
            threads.append(threading.Thread(target=turn_loop, args=(kind, i, ports, sink.getsockname()[1], args.rate), daemon=True))
            i += 1
    threads.append(threading.Thread(target=signal_thread, args=(ports["tls"], 20), daemon=True))
    threads.append(threading.Thread(target=malformed_loop, args=(ports, args.malformed_per_second), daemon=True))
    for t in threads:
        t.start()

    samples = []
    t0 = time.monotonic()
    next_reload = t0 + args.reload_interval
    print(f"soak: ferryd pid {proc.pid}, {args.duration:.0f} s, warm-up {warmup:.0f} s, idle fds {idle_fds_start}")
    while time.monotonic() - t0 < args.duration and proc.poll() is None:
        time.sleep(args.sample_interval)
        if time.monotonic() >= next_reload:
            os.kill(proc.pid, signal.SIGHUP)
            bump("reloads_sent")
            next_reload += args.reload_interval
        if proc.poll() is not None:
            break
        m = metrics(ports["admin"])
        s = {"t": round(time.monotonic() - t0, 1), "rss_kib": rss_kib(proc.pid), "fds": fds(proc.pid),
             "allocations": m.get("ferry_turn_allocations_active{*}", 0), "connections": m.get("ferry_connections_active{*}", 0),
             "signal_peers": m.get("ferry_signal_peers_connected{*}", 0),
             "relayed_to_peer": m.get('ferry_turn_relayed_packets_total{direction="to_peer"}', 0),
             "relayed_to_client": m.get('ferry_turn_relayed_packets_total{direction="to_client"}', 0),
             "turn_drops": m.get("ferry_turn_drops_total{*}", 0), "reloads_ok": m.get('ferry_reloads_total{result="ok"}', 0),
             "reloads_failed": m.get('ferry_reloads_total{result="failed"}', 0)}
        samples.append(s)
        print(f"  t={s['t']:7.1f}s rss={s['rss_kib'] / 1024:6.1f} MiB fds={s['fds']:4d} alloc={s['allocations']:3.0f} "
              f"conns={s['connections']:3.0f} peers={s['signal_peers']:3.0f} relayed={s['relayed_to_peer']:.0f}/{s['relayed_to_client']:.0f} "
              f"drops={s['turn_drops']:.0f} reloads={s['reloads_ok']:.0f}", flush=True)

    # Wind down: every client finishes its session (echoes home), peers leave, ferryd goes idle.
    stop.set()
    for t in threads:
        t.join(timeout=30)
    alive = proc.poll() is None
    end_metrics, idle_fds_end = {}, None
    if alive:
        for _ in range(100):
            end_metrics = metrics(ports["admin"])
            if end_metrics.get("ferry_turn_allocations_active{*}", 0) == 0 and end_metrics.get("ferry_connections_active{*}", 0) == 0:
                break
            time.sleep(0.2)
        idle_end = settled_fds(proc.pid)
        idle_fds_end = len(idle_end)
    time.sleep(0.5)
    sink.close()

    failures = []
    if not alive:
        failures.append(f"ferryd exited with {proc.returncode} (log: {tmp}/ferryd.log)")
    elif end_metrics.get("ferry_start_time_seconds") != started:
        failures.append("ferryd restarted (start time changed)")
    judged = [s for s in samples if s["t"] >= warmup]
    growth_kib = None
    if len(judged) >= 10:
        tenth = max(1, len(judged) // 10)
        first = statistics.median(s["rss_kib"] for s in judged[:tenth])
        last = statistics.median(s["rss_kib"] for s in judged[-tenth:])
        growth_kib = last - first
        if growth_kib > max(2048, first * 0.03):
            failures.append(f"resident memory grew {growth_kib:.0f} KiB after warm-up ({first:.0f} → {last:.0f} KiB)")
    if alive and idle_fds_end != idle_fds_start:
        kinds = lambda l: sorted(set(t.split(":")[0] if t.startswith(("socket", "pipe", "anon_inode")) else t for t in l))
        gone = [t for t in idle_start if t not in idle_end]
        new = [t for t in idle_end if t not in idle_start]
        failures.append(f"descriptors when idle: {idle_fds_start} at start, {idle_fds_end} at the end "
                        f"(gone: {gone}, new: {new}; kinds {kinds(idle_end)})")
    if alive:
        relayed_to_peer = end_metrics.get('ferry_turn_relayed_packets_total{direction="to_peer"}', 0)
        relayed_to_client = end_metrics.get('ferry_turn_relayed_packets_total{direction="to_client"}', 0)
        if relayed_to_peer != stats["sink_received"]:
            failures.append(f"to_peer: ferryd counted {relayed_to_peer:.0f} relayed, the sink received {stats['sink_received']}")
        if relayed_to_client != stats["echo_received"]:
            failures.append(f"to_client: ferryd counted {relayed_to_client:.0f} relayed, the clients received {stats['echo_received']}")
        if end_metrics.get('ferry_reloads_total{result="failed"}', 0) > 0:
            failures.append("a reload failed")
        reloads_ok = end_metrics.get('ferry_reloads_total{result="ok"}', 0)
        if reloads_ok != stats["reloads_sent"]:
            failures.append(f"{stats['reloads_sent']} SIGHUPs sent, {reloads_ok:.0f} reloads done")
    if stats["sessions"] == 0 or stats["signal_connected"] == 0:
        failures.append("no load ran (no TURN session or no signaling peer completed)")
    drops = {k: v for k, v in end_metrics.items() if k.startswith("ferry_turn_drops_total{") and not k.endswith("{*}") and v}
    summary = {"duration_s": args.duration, "warmup_s": warmup, "pid": proc.pid, "alive": alive,
               "rss_kib_first": samples[0]["rss_kib"] if samples else None, "rss_kib_last": samples[-1]["rss_kib"] if samples else None,
               "rss_growth_after_warmup_kib": growth_kib, "idle_fds_start": idle_fds_start, "idle_fds_end": idle_fds_end,
               "relayed_to_peer": end_metrics.get('ferry_turn_relayed_packets_total{direction="to_peer"}'),
               "relayed_to_client": end_metrics.get('ferry_turn_relayed_packets_total{direction="to_client"}'),
               "allocations_created": end_metrics.get("ferry_turn_allocations_created_total{*}"),
               "turn_drops": drops, "stats": stats, "failures": failures}
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(args.out, f"soak-{stamp}.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if samples:
        with open(os.path.join(args.out, f"soak-{stamp}.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(samples[0]))
            w.writeheader()
            w.writerows(samples)
    if alive:
        proc.terminate()
        proc.wait(timeout=20)
    print(json.dumps(summary, indent=2))
    print("soak: " + ("FAILED: " + "; ".join(failures) if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
