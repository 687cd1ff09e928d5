#!/usr/bin/env python3
"""ferryd against coturn with `ferry bench`, in one run: the same client, the same standard
requests, the same pinning (server on CPU 1 with one worker or relay thread, `ferry bench` on
CPU 0). For each server: the highest offered rate (stepped up from --start by --factor) that is
relayed with <= 0.1 % loss, and the latency through the relay (p50, p99, p99.9) at one common
rate. Replaces the Python generator of the first benchmarks where it can; the CPU-per-packet
figures of Benchmarks/turn-relay still use its C generator (GSO trains to a counting sink, which
`ferry bench` does not send). Not part of the tests."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "Tests", "integration"))
import turnclient as tc  # noqa: E402
sys.path.insert(0, os.path.join(HERE, ".."))
from common import free_udp_port, write_ferryd_config  # noqa: E402

USER, PASSWORD, REALM = "bench", "bench-password", "ferry.bench"


def start(kind, ferryd, tmp):
    port = free_udp_port()
    if kind == "ferryd":
        cfg = write_ferryd_config(tmp, f"""[turn]
realm = "{REALM}"
relay_ipv4 = "127.0.0.1"
max_allocations_per_user = 1000
[[turn.user]]
name = "{USER}"
password = "{PASSWORD}"
[[listener]]
name = "turn"
address = "127.0.0.1:{port}"
""")
        args = [ferryd, "--config", cfg]
    else:
        args = ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "-L", "127.0.0.1", "-E", "127.0.0.1",
                "-p", str(port), "-r", REALM, "-a", "-u", f"{USER}:{PASSWORD}", "--allow-loopback-peers",
                "-m", "1", "--db", os.path.join(tmp, "turndb"), "--log-file", "/dev/null", "--no-stdout-log",
                "--pidfile", os.path.join(tmp, "turn.pid"), "--no-software-attribute"]
    proc = subprocess.Popen(["taskset", "-c", "1", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            c = tc.TurnClient(("127.0.0.1", port), timeout=0.3)
            c.binding()
            c.close()
            return proc, port
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{kind} did not start")
            time.sleep(0.1)


def bench(ferry, port, rate, args):
    r = subprocess.run(["taskset", "-c", "0", ferry, "bench", f"turn:127.0.0.1:{port}", "--user", USER, "--password", PASSWORD,
                        "--allocations", str(args.allocations), "--size", str(args.size), "--rate", str(int(rate)),
                        "--duration", str(args.seconds), "--json", "--quiet"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bindir", default=os.path.join(HERE, "..", "..", ".build", "release"))
    ap.add_argument("--allocations", type=int, default=32)
    ap.add_argument("--size", type=int, default=1200)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--start", type=float, default=20000)
    ap.add_argument("--factor", type=float, default=1.4)
    ap.add_argument("--latency-rate", type=float, default=20000)
    args = ap.parse_args()
    ferryd, ferry = os.path.join(args.bindir, "ferryd"), os.path.join(args.bindir, "ferry")
    out = {}
    for kind in ("ferryd", "coturn"):
        with tempfile.TemporaryDirectory(prefix=f"turn-bench-{kind}-") as tmp:
            proc, port = start(kind, ferryd, tmp)
            try:
                at = bench(ferry, port, args.latency_rate, args)
                best, rate, steps = None, args.start, []
                while True:
                    r = bench(ferry, port, rate, args)
                    steps.append({"offered": r["offered_pps"], "relayed": r["relayed_pps"], "loss": r["loss"]})
                    if r["loss"] > 0.001:
                        break
                    best = r["relayed_pps"]
                    rate *= args.factor
                out[kind] = {"max_pps_at_0.1pct_loss": best, "latency_us_at_common_rate": at["latency_us"],
                             "common_rate": args.latency_rate, "steps": steps}
            finally:
                proc.terminate()
                proc.wait(10)
    if out["ferryd"]["max_pps_at_0.1pct_loss"] and out["coturn"]["max_pps_at_0.1pct_loss"]:
        out["ferryd_over_coturn_pps"] = round(out["ferryd"]["max_pps_at_0.1pct_loss"] / out["coturn"]["max_pps_at_0.1pct_loss"], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
