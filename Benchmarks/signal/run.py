#!/usr/bin/env python3
"""Signaling benchmark, side by side in one run (docs/benchmarks.md): the same load from
`ferry bench` (Swift, on Ferry's engine, one thread, niced) against

  floor    a minimal C epoll program that moves the same WebSocket messages between the same
           connections (floor.c): the least in-process routing can cost;
  one      one ferryd, every peer on it (in-process routing; one-1w: with one worker);
  two      two ferryds on a 3-node NATS cluster, each message crossing instances;
  three    three ferryds on the same cluster.

For each: messages/s delivered, latency percentiles (send to receipt, one clock), and CPU per
delivered message of the servers (ferryds, and nats-servers apart), read from /proc over the
routing phase only. Then memory: --memory-peers peers across two instances, resident memory of
the ferryds and of NATS. Plain ws:// throughout (signal.allow_plaintext): routing, not TLS.
Not part of the tests."""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import cpu_seconds, free_tcp_port, rss_kib  # noqa: E402

SECRET = "bench-signal-secret-0123456789"


def raise_files():
    """The soft open-file limit up to the hard one (20,000 on these machines, which a process
    here cannot raise: one ferryd holds at most that many peers, one generator as many)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ferryd_config(port, admin, nats=None, name="", workers=0):
    text = f"""[log]
level = "warning"
[admin]
address = "127.0.0.1:{admin}"
[server]
workers = {workers}
pin_workers = false
[turn]
relay_ipv4 = "127.0.0.1"
max_allocations = 1000
[stream]
max_connections = 300000
max_connections_per_source = 300000
idle_timeout_seconds = 3600
[signal]
enabled = true
allow_plaintext = true
token_secrets = ["{SECRET}"]
messages_per_second = 100000
message_burst = 100000
bytes_per_second = 1073741824
registrations_per_second = 1000
registration_burst = 1000
ping_interval_seconds = 3600
[[listener]]
name = "ws"
transport = "tcp"
address = "127.0.0.1:{port}"
"""
    if nats:
        text += f'[signal.nats]\nservers = {json.dumps(nats)}\ninstance = "{name}"\n'
    return text


class Servers:
    """The processes of one scenario, stopped together."""

    def __init__(self, tmp):
        self.tmp, self.procs, self.nats = tmp, [], []

    def ferryd(self, ferryd, nats=None, name="solo", workers=0):
        port, admin = free_tcp_port(), free_tcp_port()
        cfg = os.path.join(self.tmp, f"ferry-{name}.toml")
        with open(cfg, "w") as f:
            f.write(ferryd_config(port, admin, nats, name, workers))
        p = subprocess.Popen([ferryd, "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=raise_files)
        self.procs.append(p)
        return f"ws://127.0.0.1:{port}/v1/signal"

    def floor(self, binary):
        port = free_tcp_port()
        self.procs.append(subprocess.Popen([binary, str(port)], preexec_fn=raise_files))
        return f"ws://127.0.0.1:{port}/v1/signal"

    def nats_cluster(self, nodes=3):
        client = [free_tcp_port() for _ in range(nodes)]
        route = [free_tcp_port() for _ in range(nodes)]
        for i in range(nodes):
            routes = ", ".join(f'"nats://127.0.0.1:{p}"' for j, p in enumerate(route) if j != i)
            cfg = os.path.join(self.tmp, f"nats{i}.conf")
            with open(cfg, "w") as f:
                f.write(f"listen: 127.0.0.1:{client[i]}\nmax_payload: 1048576\n"
                        f"cluster {{ name: B, listen: 127.0.0.1:{route[i]}, routes: [{routes}] }}\n")
            self.nats.append(subprocess.Popen(["nats-server", "-c", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.5)
        return [f"nats://127.0.0.1:{p}" for p in client]

    def cpu(self):
        return sum(cpu_seconds(p.pid) for p in self.procs), sum(cpu_seconds(p.pid) for p in self.nats)

    def rss_mib(self):
        return sum(rss_kib(p.pid) for p in self.procs) / 1024, sum(rss_kib(p.pid) for p in self.nats) / 1024

    def stop(self):
        for p in self.procs + self.nats:
            p.terminate()
        for p in self.procs + self.nats:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def bench(ferry, urls, a, peers=None, rate=None, duration=None, on_routing=None):
    """Runs `ferry bench` (niced), calling `on_routing` when routing starts; its JSON result."""
    peers = peers or a.peers
    args = [ferry, "bench", *urls, "--token-secret", SECRET, "--peers", str(peers), "--senders", str(min(a.senders, peers)),
            "--rate", str(rate or a.rate), "--duration", str(duration or a.duration), "--json",
            "--sources", str(max(1, peers // 20000 + 1))]
    p = subprocess.Popen(["nice", "-n", "10"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=raise_files)
    for line in p.stderr:
        if line.strip() == "routing" and on_routing:
            on_routing()
    out = p.stdout.read()
    p.wait()
    if p.returncode != 0:
        raise RuntimeError(f"ferry bench failed: {out}")
    return json.loads(out)


def scenario(name, tmp, a, start):
    s = Servers(tmp)
    try:
        urls = start(s)
        time.sleep(1)
        marks = {}
        r = bench(a.ferry, urls, a, on_routing=lambda: marks.setdefault("cpu", s.cpu()))
        ferryd_cpu, nats_cpu = (x - y for x, y in zip(s.cpu(), marks["cpu"]))
        n = max(1, r["delivered"])
        row = {"name": name, "delivered_per_second": r["delivered_per_second"], "sent": r["sent"], "delivered": r["delivered"],
               "errors": r["errors"], "p50_ms": r["latency_us"]["p50"] / 1000, "p99_ms": r["latency_us"]["p99"] / 1000,
               "p999_ms": r["latency_us"]["p99.9"] / 1000, "server_us_per_msg": ferryd_cpu / n * 1e6,
               "nats_us_per_msg": nats_cpu / n * 1e6}
        print(f"{name:6} {row['delivered_per_second']:>8.0f} msg/s delivered ({r['delivered']} of {r['sent']}; errors {r['errors'] or 'none'}); "
              f"latency p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, p99.9 {row['p999_ms']:.2f} ms; "
              f"CPU per message: servers {row['server_us_per_msg']:.1f} µs, NATS {row['nats_us_per_msg']:.1f} µs", flush=True)
        return row
    finally:
        s.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ferryd", required=True)
    p.add_argument("--ferry", required=True)
    p.add_argument("--floor", required=True, help="the compiled floor.c")
    p.add_argument("--peers", type=int, default=10000)
    p.add_argument("--senders", type=int, default=1000)
    p.add_argument("--rate", type=int, default=20000)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--memory-peers", type=int, default=36000, help="across two instances (at most 2 × 18,000 here); 0 skips")
    p.add_argument("--only", default="floor,one,one-1w,two,three")
    a = p.parse_args()
    raise_files()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        only = a.only.split(",")
        if "floor" in only:
            rows.append(scenario("floor", tmp, a, lambda s: [s.floor(a.floor)]))
        if "one" in only:
            rows.append(scenario("one", tmp, a, lambda s: [s.ferryd(a.ferryd)]))
        if "one-1w" in only:
            # One worker, as the floor has one thread: no message crosses between workers.
            rows.append(scenario("one-1w", tmp, a, lambda s: [s.ferryd(a.ferryd, workers=1)]))
        if "two" in only:
            rows.append(scenario("two", tmp, a, lambda s: (lambda n: [s.ferryd(a.ferryd, n[:1], "i0"), s.ferryd(a.ferryd, n[1:2], "i1")])(s.nats_cluster())))
        if "three" in only:
            rows.append(scenario("three", tmp, a, lambda s: (lambda n: [s.ferryd(a.ferryd, n[i:i + 1], f"i{i}") for i in range(3)])(s.nats_cluster())))
        by = {r["name"]: r for r in rows}
        for k in ("one", "one-1w"):
            if "floor" in by and k in by:
                print(f"in-process routing ({k}) / C floor, CPU per message: {by[k]['server_us_per_msg'] / by['floor']['server_us_per_msg']:.2f} (goal <= 1.3)")
        for k in ("two", "three"):
            if k in by and "one" in by:
                total = by[k]["server_us_per_msg"] + by[k]["nats_us_per_msg"]
                print(f"{k} instances / in-process, CPU per message: ferryds {by[k]['server_us_per_msg'] / by['one']['server_us_per_msg']:.2f}, "
                      f"with NATS {total / by['one']['server_us_per_msg']:.2f} (goal <= 2)")
        if a.memory_peers:
            # Two instances, each with half the peers from a generator of its own (one process
            # holds at most the hard open-file limit of connections).
            s = Servers(tmp)
            try:
                nats = s.nats_cluster()
                urls = [s.ferryd(a.ferryd, nats[:1], "m0"), s.ferryd(a.ferryd, nats[1:2], "m1")]
                time.sleep(1)
                base_f, base_n = s.rss_mib()
                half = a.memory_peers // 2
                marks = []
                gens = [subprocess.Popen(["nice", "-n", "10", a.ferry, "bench", u, "--token-secret", SECRET, "--peers", str(half),
                                          "--senders", "10", "--rate", "100", "--duration", "6", "--json", "--sources", "2"],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=raise_files) for u in urls]
                for g in gens:
                    for line in g.stderr:
                        if line.strip() == "routing":
                            break
                time.sleep(2)
                f_mib, n_mib = s.rss_mib()
                results = [json.loads(g.stdout.read() or "{}") for g in gens]
                for g in gens:
                    g.wait()
                peers = sum(r.get("peers", 0) for r in results)
                if peers < a.memory_peers:
                    print(f"memory: only {peers} of {a.memory_peers} peers authenticated: {results}", flush=True)
                print(f"memory: {peers} peers across two instances: ferryds {f_mib:.0f} MiB resident "
                      f"({(f_mib - base_f) * 1024 / max(1, peers):.2f} KiB per peer, {base_f:.0f} MiB idle), NATS {n_mib:.0f} MiB "
                      f"({base_n:.0f} idle); so 100,000 peers: about {base_f + (f_mib - base_f) * 100000 / max(1, peers) + n_mib + (n_mib - base_n) * (100000 / max(1, peers) - 1):.0f} MiB "
                      f"in all (goal <= 1536)", flush=True)
                del marks
            finally:
                s.stop()


if __name__ == "__main__":
    main()
