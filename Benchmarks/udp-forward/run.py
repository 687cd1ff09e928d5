#!/usr/bin/env python3
"""Engine benchmark: ferryd in plain UDP forwarding mode against a minimal C recvmmsg/sendmmsg
forwarder, same load generator, same pinning, alternating in one run.

The forwarder under test is pinned to CPU 1; the load generator and the sink share CPU 0.
Each trial offers datagrams as fast as the generator can for DURATION seconds; forwarded
packets/s is what the sink counted over the offered time, CPU per packet is the forwarder's
user+system CPU time (all threads, from /proc) divided by the packets it forwarded.
Prints both, and the ratio ferryd/C. Not part of the tests."""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from common import cpu_seconds, free_udp_port  # noqa: E402


def trial(kind, bindir, ferryd, duration, sockets, size):
    listen, sink_port = free_udp_port(), free_udp_port()
    sink = subprocess.Popen(["taskset", "-c", "0", f"{bindir}/sink", str(sink_port), str(duration)], stdout=subprocess.PIPE, text=True)
    tmp = None
    if kind == "C":
        fwd = subprocess.Popen(["taskset", "-c", "1", f"{bindir}/cforward", str(listen), str(sink_port)])
    else:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        tmp.write(f"""[server]
workers = 1
pin_workers = false
[log]
level = "warning"
[admin]
address = ""
[engine]
batch_size = 64
gro = false
[[listener]]
name = "bench"
address = "127.0.0.1:{listen}"
service = "forward"
forward_to = "127.0.0.1:{sink_port}"
""")
        tmp.close()
        fwd = subprocess.Popen(["taskset", "-c", "1", ferryd, "--config", tmp.name])
    time.sleep(0.7)
    before = cpu_seconds(fwd.pid)
    gen = subprocess.run(["taskset", "-c", "0", f"{bindir}/loadgen", str(listen), str(duration), str(sockets), str(size)],
                         capture_output=True, text=True, check=True)
    after = cpu_seconds(fwd.pid)
    received = int(sink.communicate(timeout=60)[0].strip() or 0)
    fwd.terminate()
    fwd.wait(10)
    if tmp:
        os.unlink(tmp.name)
    sent = int(gen.stdout.strip())
    return {"pps": received / duration, "cpu_us": (after - before) / max(received, 1) * 1e6,
            "loss": 1 - received / max(sent, 1), "offered": sent / duration}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ferryd", required=True)
    p.add_argument("--bindir", required=True, help="where cforward, loadgen and sink were built")
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sockets", type=int, default=8)
    p.add_argument("--size", type=int, default=1200)
    a = p.parse_args()
    if os.cpu_count() < 2:
        sys.exit("needs 2 CPUs")
    results = {"C": [], "ferryd": []}
    for r in range(a.rounds):
        for kind in ("C", "ferryd"):
            t = trial(kind, a.bindir, a.ferryd, a.duration, a.sockets, a.size)
            results[kind].append(t)
            print(f"round {r + 1} {kind:7s} forwarded {t['pps'] / 1000:7.1f}k pkt/s  offered {t['offered'] / 1000:7.1f}k  "
                  f"loss {t['loss'] * 100:5.1f}%  cpu {t['cpu_us']:5.2f} us/pkt", flush=True)
    mean = {k: {m: statistics.mean(t[m] for t in v) for m in ("pps", "cpu_us")} for k, v in results.items()}
    print()
    print(f"{'forwarder':10s} {'packets/s':>12s} {'CPU us/packet':>14s}")
    for k in ("C", "ferryd"):
        print(f"{k:10s} {mean[k]['pps']:12.0f} {mean[k]['cpu_us']:14.2f}")
    print(f"ratio ferryd/C: packets/s {mean['ferryd']['pps'] / mean['C']['pps']:.3f}, "
          f"CPU per packet {mean['ferryd']['cpu_us'] / mean['C']['cpu_us']:.3f}  (goal: packets/s >= 0.95)")


if __name__ == "__main__":
    main()
