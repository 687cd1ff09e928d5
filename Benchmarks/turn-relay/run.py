#!/usr/bin/env python3
"""TURN relay benchmark: ferryd against coturn (Debian's turnserver) on the same machine, in one
run, with the same load generator and pinning.

Setup: the server under test is pinned to CPU 1 (ferryd with one worker; coturn with one relay
thread); the ChannelData generator (tgen.c) and the counting peer (sink.c) share CPU 0. The
driver opens SESSIONS client sockets, allocates and binds a channel to the sink on each (standard
TURN, the same requests for both servers), then hands the sockets to tgen, which sends 1200-byte
ChannelData round-robin over them.

Reported:
  * max relayed packets/s at <= 0.1% loss (offered rate stepped up until loss exceeds 0.1%),
  * server CPU per relayed packet at one common rate, next to the plain C forwarder
    (Benchmarks/udp-forward/cforward.c) at the same rate,
  * resident memory per allocation at ALLOCATIONS allocations.
Not part of the tests."""
import argparse
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "Tests", "integration"))
import turnclient as tc  # noqa: E402
sys.path.insert(0, os.path.join(HERE, ".."))
from common import cpu_seconds, free_udp_port, rss_kib, write_ferryd_config  # noqa: E402

USER, PASSWORD, REALM = "bench", "bench-password", "ferry.bench"
GEN_GSO = 16  # ChannelData messages per generator send (see tgen.c); set by --gen-gso
BASELINE = None  # --baseline: another ferryd binary (the commit before a change), run as "ferryd-baseline"


class Server:
    def __init__(self, kind, ferryd, tmp):
        self.kind = kind
        self.port = free_udp_port()
        if kind.startswith("ferryd"):
            gso = "false" if kind == "ferryd-nogso" else "true"
            if kind == "ferryd-baseline":
                ferryd = BASELINE
            cfg = write_ferryd_config(tmp, f"""[engine]
gso = {gso}
[turn]
realm = "{REALM}"
relay_ipv4 = "127.0.0.1"
port_min = 20000
port_max = 60000
max_allocations = 30000
max_allocations_per_user = 30000
unauthorized_per_second = 0
[[turn.user]]
name = "{USER}"
password = "{PASSWORD}"
[policy]
allow = ["127.0.0.0/8"]
[[listener]]
name = "turn-udp"
address = "127.0.0.1:{self.port}"
service = "turn"
""")
            args = [ferryd, "--config", cfg]
        else:
            args = ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "-L", "127.0.0.1", "-E", "127.0.0.1",
                    "-p", str(self.port), "-r", REALM, "-a", "-u", f"{USER}:{PASSWORD}", "--allow-loopback-peers",
                    "-m", "1", "--db", os.path.join(tmp, "turndb"), "--log-file", "/dev/null", "--no-stdout-log",
                    "--min-port", "20000", "--max-port", "60000", "--pidfile", os.path.join(tmp, "turn.pid"),
                    "--no-software-attribute"]
        self.proc = subprocess.Popen(["taskset", "-c", "1", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                c = tc.TurnClient(("127.0.0.1", self.port), timeout=0.3)
                c.binding()
                c.close()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{kind} did not start")
                time.sleep(0.1)

    def sessions(self, n, peer_port):
        """n client sockets, each with an allocation and channel 0x4000 bound to the peer."""
        out = []
        for _ in range(n):
            c = tc.TurnClient(("127.0.0.1", self.port), USER, PASSWORD, timeout=3)
            r = c.allocate([(tc.LIFETIME, struct.pack("!I", 3600))])
            assert r.ok, f"{self.kind} allocate: {r.code}"
            if peer_port:
                r = c.channel_bind(0x4000, "127.0.0.1", peer_port)
                assert r.ok, f"{self.kind} channel bind: {r.code}"
                c.sock.connect(("127.0.0.1", self.port))
            out.append(c)
        return out

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def blast(bindir, pid, socks, rate, duration, size, peer_port, channel_data=True, target_port=None):
    """Offers `rate` packets/s (0 = max) for `duration`; returns delivered pps, loss, CPU us/packet."""
    sink = subprocess.Popen(["taskset", "-c", "0", f"{bindir}/sink", str(peer_port), str(duration)],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    before = cpu_seconds(pid)
    if channel_data:
        base = 1000
        for i, c in enumerate(socks):
            os.dup2(c.sock.fileno(), base + i)
        gen = subprocess.run(["taskset", "-c", "0", f"{bindir}/tgen", str(base), str(len(socks)), str(0x4000), str(size),
                              str(rate), str(duration), str(GEN_GSO)], capture_output=True, text=True, check=True,
                             pass_fds=range(base, base + len(socks)))
        for i in range(len(socks)):
            os.close(base + i)
    else:
        gen = subprocess.run(["taskset", "-c", "0", f"{bindir}/loadgen", str(target_port), str(duration), "8", str(size), str(rate)],
                             capture_output=True, text=True, check=True)
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
    p.add_argument("--size", type=int, default=1200)
    p.add_argument("--rates", default="50000,100000,150000,200000,250000,300000,350000,400000,500000,600000")
    p.add_argument("--cpu-rate", type=int, default=100000, help="common rate for CPU per packet")
    p.add_argument("--allocations", type=int, default=10000)
    p.add_argument("--gen-gso", type=int, default=16, help="ChannelData messages per generator send (1 = no GSO)")
    p.add_argument("--baseline", help="another ferryd binary to run side by side (the commit before a change)")
    p.add_argument("--servers", default="coturn,ferryd,ferryd-nogso",
                   help="which to run, in order (ferryd-baseline needs --baseline)")
    a = p.parse_args()
    global GEN_GSO, BASELINE
    GEN_GSO = a.gen_gso
    BASELINE = a.baseline
    kinds = a.servers.split(",")
    if a.baseline and "ferryd-baseline" not in kinds:
        kinds.append("ferryd-baseline")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rates = [int(r) for r in a.rates.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            server = Server(kind, a.ferryd, tmp)
            peer = free_udp_port()
            socks = server.sessions(a.sessions, peer)
            best, steps = None, []
            for rate in rates:
                r = blast(a.bindir, server.proc.pid, socks, rate, a.duration, a.size, peer)
                steps.append((rate, r))
                print(f"{kind:7s} offered {r['offered'] / 1000:6.1f}k  relayed {r['pps'] / 1000:6.1f}k pkt/s  "
                      f"loss {r['loss'] * 100:6.3f}%  cpu {r['cpu_us']:5.2f} us/pkt", flush=True)
                if r["loss"] <= 0.001:
                    best = r
                else:
                    break
            cpu = blast(a.bindir, server.proc.pid, socks, a.cpu_rate, a.duration, a.size, peer)
            for c in socks:
                c.close()
            server.stop()
            # Memory per allocation: RSS growth over ALLOCATIONS allocations (no traffic).
            server = Server(kind, a.ferryd, tmp)
            time.sleep(0.3)
            rss0 = rss_kib(server.proc.pid)
            many = server.sessions(a.allocations, None)
            time.sleep(0.5)
            rss1 = rss_kib(server.proc.pid)
            for c in many:
                c.close()
            server.stop()
            results[kind] = {"best": best, "cpu": cpu, "mem": (rss1 - rss0) * 1024 / a.allocations, "rss": rss1}
            print(f"{kind:7s} at {a.cpu_rate / 1000:.0f}k pkt/s: cpu {cpu['cpu_us']:.2f} us/pkt, loss {cpu['loss'] * 100:.3f}%;"
                  f" {a.allocations} allocations: {(rss1 - rss0) / 1024:.1f} MiB more RSS "
                  f"({results[kind]['mem']:.0f} B each, {rss1 / 1024:.1f} MiB total)", flush=True)
        # The plain C forwarder at the same rate, for the CPU-per-packet bar.
        listen, peer = free_udp_port(), free_udp_port()
        fwd = subprocess.Popen(["taskset", "-c", "1", f"{a.bindir}/cforward", str(listen), str(peer)])
        time.sleep(0.3)
        cf = blast(a.bindir, fwd.pid, None, a.cpu_rate, a.duration, a.size, peer, channel_data=False, target_port=listen)
        fwd.kill()
        fwd.wait()
        print(f"C forwarder at {a.cpu_rate / 1000:.0f}k pkt/s: cpu {cf['cpu_us']:.2f} us/pkt, loss {cf['loss'] * 100:.3f}%")
    print()
    print(f"{'server':15s} {'max pkt/s @<=0.1% loss':>19s} {'CPU us/pkt @' + str(a.cpu_rate // 1000) + 'k':>16s} {'bytes/allocation':>17s}")
    for k in kinds:
        r = results[k]
        print(f"{k:15s} {(r['best']['pps'] if r['best'] else 0):19.0f} {r['cpu']['cpu_us']:16.2f} {r['mem']:17.0f}")
    print(f"{'C forwarder':15s} {'':19s} {cf['cpu_us']:16.2f}")
    if "ferryd-baseline" in results and "ferryd" in results:
        f, b = results["ferryd"], results["ferryd-baseline"]
        print(f"ratio ferryd/ferryd-baseline: packets/s {(f['best']['pps'] if f['best'] else 0) / max(b['best']['pps'] if b['best'] else 1, 1):.2f}, "
              f"CPU per packet {f['cpu']['cpu_us'] / b['cpu']['cpu_us']:.2f}")
    if not all(k in results for k in ("coturn", "ferryd", "ferryd-nogso")):
        return
    f, c = results["ferryd"], results["coturn"]
    fb = f["best"]["pps"] if f["best"] else 0
    cb = c["best"]["pps"] if c["best"] else 0
    n = results["ferryd-nogso"]
    nb = n["best"]["pps"] if n["best"] else 0
    print(f"ratio ferryd/coturn packets/s: {fb / max(cb, 1):.2f} (goal >= 1.5; without GSO {nb / max(cb, 1):.2f}); "
          f"CPU per packet / C forwarder: {f['cpu']['cpu_us'] / cf['cpu_us']:.2f} "
          f"(goal <= 1.15; without GSO {n['cpu']['cpu_us'] / cf['cpu_us']:.2f}, the like-for-like figure)")
    if fb >= rates[-1] * 0.95 or cb >= rates[-1] * 0.95:
        print("note: a server kept up with the highest offered rate; the generator, not the server, set the limit")


if __name__ == "__main__":
    main()
