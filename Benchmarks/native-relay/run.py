#!/usr/bin/env python3
"""Native-relay benchmark (docs/relay-protocol.md): ferryd's native relay against the plain C
forwarder (Benchmarks/udp-forward/cforward.c) and coturn relaying ChannelData, in one run, with
one generator (Benchmarks/turn-relay/tgen.c: WireGuard transport-data datagrams for the native
relay and the C forwarder, ChannelData for coturn, 1200 bytes on the wire each) and the same
pinning: the server on CPU 1, generator and sink on CPU 0.

The native relay's SESSIONS sessions each have a client socket (end A) and share the sink's
address (end B, bound once per session from the sink's port before the sink starts); a handshake
per session teaches the relay B's receiver index. ferryd runs twice: with GRO (the generator's
GSO trains arrive coalesced and leave as GSO trains) and without (one datagram at a time, the
like-for-like comparison with the C forwarder, which reads without GRO).

Reported: max packets/s at <= 0.1% loss, server CPU per packet at one common rate, and the
resident memory per idle session at IDLE sessions. Not part of the tests."""
import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "Tests", "integration"))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "turn-relay"))
import wgrelay  # noqa: E402
from common import cpu_seconds, free_udp_port, rss_kib, sweep, write_ferryd_config  # noqa: E402
import run as turnrelay  # noqa: E402  (Benchmarks/turn-relay/run.py: coturn's setup and its blast)

SECRET = "native-bench-secret-0123"
B_INDEX = 0x42


class NativeRelay:
    def __init__(self, ferryd, tmp, gro, max_sessions):
        self.port = free_udp_port()
        cfg = write_ferryd_config(tmp, f"""[engine]
gro = {"true" if gro else "false"}
[turn]
static_auth_secrets = ["{SECRET}"]
[relay]
max_sessions = {max_sessions}
sessions_per_network = {max_sessions}
binds_per_second = 1000000
[[listener]]
name = "relay-udp"
address = "127.0.0.1:{self.port}"
service = "relay"
""")
        self.proc = subprocess.Popen(["taskset", "-c", "1", ferryd, "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addr = ("127.0.0.1", self.port)
        deadline = time.time() + 10
        while True:
            probe = wgrelay.UDPPort()
            try:
                probe.send(wgrelay.message(0x001, 0, []), self.addr)
                probe.recv(0.3)
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("ferryd did not start")
            finally:
                probe.close()

    def sessions(self, n, sink_port, handshake=True, keep=True):
        """n sessions whose B end is the sink's address; their A sockets (connected to the relay)."""
        sink = wgrelay.UDPPort(port=sink_port)
        out = []
        for i in range(n):
            ka, kb = os.urandom(32), os.urandom(32)
            a = wgrelay.UDPPort()
            assert wgrelay.bind(a, self.addr, wgrelay.credential(SECRET, ka, "bench"), kb).success
            assert wgrelay.bind(sink, self.addr, wgrelay.credential(SECRET, kb, "bench"), ka).state == 1
            if handshake:
                a.send(wgrelay.initiation(i + 1, kb), self.addr)
                sink.recv()
                sink.send(wgrelay.response(B_INDEX, i + 1, ka), self.addr)
                a.recv()
            if keep:
                a.sock.connect(self.addr)
                out.append(a)
            else:
                a.close()
        sink.close()
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def blast(bindir, pid, socks, rate, duration, payload, sink_port, wg, receiver):
    """tgen over `socks` (WireGuard data to `receiver`, or ChannelData on 0x4000) into the sink."""
    sink = subprocess.Popen(["taskset", "-c", "0", f"{bindir}/sink", str(sink_port), str(duration)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    before = cpu_seconds(pid)
    base = 1000
    for i, s in enumerate(socks):
        os.dup2(s.fileno(), base + i)
    args = [f"{bindir}/tgen", str(base), str(len(socks)), str(receiver), str(payload), str(rate), str(duration), str(turnrelay.GEN_GSO)]
    gen = subprocess.run(["taskset", "-c", "0", *args, *(["wg"] if wg else [])], capture_output=True, text=True, check=True,
                         pass_fds=range(base, base + len(socks)))
    for i in range(len(socks)):
        os.close(base + i)
    after = cpu_seconds(pid)
    got = int(sink.communicate(timeout=60)[0].strip() or 0)
    sent = int(gen.stdout.strip())
    return {"offered": sent / duration, "pps": got / duration, "loss": max(0.0, 1 - got / max(sent, 1)),
            "cpu_us": (after - before) / max(got, 1) * 1e6}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ferryd", required=True)
    p.add_argument("--bindir", required=True)
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--duration", type=float, default=3)
    p.add_argument("--rates", default="50000,100000,150000,200000,250000,300000,400000,500000,700000,1000000")
    p.add_argument("--cpu-rate", type=int, default=100000)
    p.add_argument("--idle", type=int, default=100000, help="idle sessions for the memory figure")
    p.add_argument("--servers", default="cforward,ferryd-nogro,ferryd,coturn")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rates = [int(r) for r in a.rates.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in a.servers.split(","):
            sink = free_udp_port()
            if kind == "cforward":
                listen = free_udp_port()
                proc = subprocess.Popen(["taskset", "-c", "1", f"{a.bindir}/cforward", str(listen), str(sink)])
                time.sleep(0.3)
                socks = []
                for _ in range(a.sessions):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.connect(("127.0.0.1", listen))
                    socks.append(s)
                def go(rate): return blast(a.bindir, proc.pid, socks, rate, a.duration, 1184, sink, True, B_INDEX)
                stop = proc.kill
            elif kind.startswith("ferryd"):
                server = NativeRelay(a.ferryd, tmp, gro=kind == "ferryd", max_sessions=max(a.idle, a.sessions) + 10)
                socks = [s.sock for s in server.sessions(a.sessions, sink)]
                proc = server.proc
                def go(rate): return blast(a.bindir, proc.pid, socks, rate, a.duration, 1184, sink, True, B_INDEX)
                stop = server.stop
            else:
                server = turnrelay.Server("coturn", a.ferryd, tmp)
                socks = [c.sock for c in server.sessions(a.sessions, sink)]
                proc = server.proc
                def go(rate): return blast(a.bindir, proc.pid, socks, rate, a.duration, 1196, sink, False, 0x4000)
                stop = server.stop
            best = sweep(kind, rates, go)
            cpu = go(a.cpu_rate)
            for s in socks:
                s.close()
            stop()
            results[kind] = {"best": best["pps"] if best else 0, "cpu": cpu["cpu_us"]}
            print(f"{kind:16s} at {a.cpu_rate / 1000:.0f}k pkt/s: cpu {cpu['cpu_us']:.2f} us/pkt, loss {cpu['loss'] * 100:.3f}%", flush=True)
        if a.idle:
            server = NativeRelay(a.ferryd, tmp, gro=True, max_sessions=a.idle + 10)
            time.sleep(0.3)
            rss0 = rss_kib(server.proc.pid)
            start = time.time()
            server.sessions(a.idle, free_udp_port(), handshake=False, keep=False)
            time.sleep(1.5)
            rss1 = rss_kib(server.proc.pid)
            server.stop()
            per = (rss1 - rss0) * 1024 / a.idle
            print(f"{a.idle} idle sessions (both ends bound, made in {time.time() - start:.0f} s): "
                  f"{(rss1 - rss0) / 1024:.1f} MiB more RSS, {per:.0f} B per session (goal <= 512)")
    print()
    print(f"{'server':16s} {'max pkt/s @<=0.1% loss':>23s} {'CPU us/pkt @' + str(a.cpu_rate // 1000) + 'k':>16s}")
    for k, r in results.items():
        print(f"{k:16s} {r['best']:23.0f} {r['cpu']:16.2f}")
    c = results.get("cforward")
    for k in ("ferryd-nogro", "ferryd"):
        if k in results and c:
            print(f"ratio {k}/C forwarder: packets/s {results[k]['best'] / max(c['best'], 1):.2f} (goal >= 1.0), "
                  f"CPU per packet {results[k]['cpu'] / c['cpu']:.2f}")
        if k in results and "coturn" in results:
            print(f"ratio {k}/coturn: packets/s {results[k]['best'] / max(results['coturn']['best'], 1):.2f} (goal >= 3)")
    if any(r["best"] >= rates[-1] * 0.95 for r in results.values()):
        print("note: a server kept up with the highest offered rate; the generator, not the server, set the limit")


if __name__ == "__main__":
    main()
