#!/usr/bin/env python3
"""WireGuard through `ferry tunnel`, against WireGuard alone, in one run, in the namespaces of
Tests/integration/lab.py: with routed (untranslated) LANs (--nat none, the default), or behind
port-preserving NATs (--nat preserving), so that WireGuard's own endpoints work either way:

  1. plain: WireGuard with each other's address (or NAT's address) as endpoint (no agent): the
     baseline, measured before and after the agents' runs (their mean is the baseline);
  2. direct: the agents find the direct path from WireGuard's own port (routed: to each other's
     host address; behind NAT: hole punched) and hand it to WireGuard (the agents step off it);
  3. relayed: the agents with --relay-only --proxy carry WireGuard through ferryd's TURN;
  4. native: the agents with --relay-only move WireGuard onto ferryd's native relay (bound from
     WireGuard's port; no agent on the path);
  5. then B's network is made to drop UDP and all TCP but 443 (lab.py's block_b): TURN over TLS
     through the agents (`--proxy`) against the native relay's stream side (B's agent carries
     B's side over TLS; A's WireGuard talks to the relay's UDP port).

For each: the median and p90 round trip of `ping` across the WireGuard interfaces, and TCP
throughput with iperf3 (A to B). Goals (docs/benchmarks.md): relayed throughput >= 0.8 x direct;
the agent adds <= 50 us to the median round trip compared with plain WireGuard. Needs root,
wireguard-go, wireguard-tools, iperf3 (scripts/setup.sh test). Not part of the tests."""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "Tests", "integration"))
import conftest  # noqa: E402
sys.path.insert(0, os.path.join(HERE, ".."))
from common import cpu_seconds  # noqa: E402
from lab import ADMIN_IP, FERRY_IP, Lab, WireGuard  # noqa: E402
from test_tunnel_e2e import TOKEN_SECRET, ferryd_config, lab_certificate  # noqa: E402


PEERS_CPU = []  # ["taskset", "-c", "0"] with --pin


def ping_stats(lab, wg_b, count):
    out = subprocess.run(["ip", "netns", "exec", lab.peer_a.name, *PEERS_CPU, "ping", "-n", "-c", str(count), "-i", "0.01", "-W", "1",
                          wg_b.address], capture_output=True, text=True).stdout
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    if not rtts:
        return None
    rtts.sort()
    return {"median_us": round(statistics.median(rtts) * 1000, 1), "p90_us": round(rtts[int(len(rtts) * 0.9) - 1] * 1000, 1),
            "received": len(rtts), "sent": count}


def connect(lab, wg_b, seconds=40):
    """Pings until one answer comes back: a handshake, which behind NATs may need a few of
    WireGuard's 5-second retries for both sides' mappings to exist (a simultaneous open)."""
    deadline = time.time() + seconds
    while True:
        # Both sides send, so both NATs hold a mapping (B alone would never start a handshake).
        back = subprocess.Popen(["ip", "netns", "exec", lab.peer_b.name, "ping", "-n", "-c", "1", "-W", "1", "10.99.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok = subprocess.run(["ip", "netns", "exec", lab.peer_a.name, "ping", "-n", "-c", "1", "-W", "1", wg_b.address],
                            capture_output=True).returncode == 0
        back.wait()
        if ok:
            break
        if time.time() > deadline:
            raise RuntimeError("WireGuard did not connect")
    ping_stats(lab, wg_b, 20)


def pids(pattern):
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def iperf(lab, wg_b, seconds, watch=None):
    """Throughput in Mbit/s, and the CPU seconds per second each watched process used meanwhile."""
    watch = watch or {}
    before = {name: sum(cpu_seconds(p) for p in ps) for name, ps in watch.items()}
    started = time.time()
    mbps = iperf_run(lab, wg_b, seconds)
    took = time.time() - started
    cpu = {name: round((sum(cpu_seconds(p) for p in ps) - before[name]) / took, 2) for name, ps in watch.items()}
    return mbps, cpu


def iperf_run(lab, wg_b, seconds):
    server = subprocess.Popen(["ip", "netns", "exec", lab.peer_b.name, *PEERS_CPU, "iperf3", "-s", "-1", "-B", wg_b.address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = subprocess.run(["ip", "netns", "exec", lab.peer_a.name, *PEERS_CPU, "iperf3", "-c", wg_b.address, "-t", str(seconds), "-J"],
                       capture_output=True, text=True)
    server.wait(10)
    try:
        return round(json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6, 1)
    except (ValueError, KeyError):
        return None


def agents(lab, wg_a, wg_b, directory, cert, relay_only, proxy=False, want=None, handed=True):
    procs = []
    for ns, wg, name in ((lab.peer_a, wg_a, "a"), (lab.peer_b, wg_b, "b")):
        token = subprocess.run([conftest.binary("ferry"), "token", "--secret", TOKEN_SECRET, "--network", "lab", "--peer", wg.public],
                               capture_output=True, text=True, check=True).stdout.strip()
        status = os.path.join(directory, f"status-{name}.json")
        args = ["ip", "netns", "exec", ns.name, *PEERS_CPU, conftest.binary("ferry"), "tunnel", "run", "--interface", wg.name,
                "--signal", f"wss://{FERRY_IP}:443/v1/signal", "--token", token, "--ca", cert, "--status-file", status,
                "--state-file", status + ".state"]
        procs.append(subprocess.Popen(args + (["--relay-only"] if relay_only else []) + (["--proxy"] if proxy else []),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    want = want or ("relayed" if relay_only else "direct")
    wants = want if isinstance(want, tuple) else (want, want)

    def path(name):
        try:
            p = json.load(open(os.path.join(directory, f"status-{name}.json")))["peers"][0]
            # A direct path to a host address is handed to WireGuard: wait for that too.
            return p["path"] if relay_only or not handed or p.get("wireguard_endpoint") else None
        except (OSError, ValueError, IndexError, KeyError):
            return None
    deadline = time.time() + 40
    while not (path("a") == wants[0] and path("b") == wants[1]):
        if time.time() > deadline:
            raise RuntimeError(f"agents did not reach a {want} path")
        time.sleep(0.2)
    return procs


def stop(procs):
    for p in procs:
        os.killpg(p.pid, 15)
        p.wait(5)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bindir", default=os.path.join(HERE, "..", "..", ".build", "release"))
    ap.add_argument("--pings", type=int, default=500)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--nat", choices=["none", "preserving"], default="none")
    ap.add_argument("--pin", action="store_true",
                    help="ferryd alone on CPU 1, the peers (WireGuard, agents, ping, iperf3) on CPU 0: the relay "
                         "as on a machine of its own, not competing with the peers for the same two cores")
    ap.add_argument("--xdp", choices=["off", "generic", "native"], default="off",
                    help="ferryd's XDP fast path on its interface toward the peers (docs/xdp.md)")
    args = ap.parse_args()
    global PEERS_CPU
    PEERS_CPU = ["taskset", "-c", "0"] if args.pin else []
    os.environ["FERRY_BIN_DIR"] = os.path.abspath(args.bindir)
    conftest.BIN = os.path.abspath(args.bindir)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ferry-tunnel-bench-") as d:
        lab = Lab(nat_a=args.nat, nat_b=args.nat)
        cert, key = lab_certificate(d)
        config = ferryd_config(cert, key).replace('self_relay_urls = [', f'self_relay_urls = ["wgrelay:{FERRY_IP}:3479", "wgrelays:{FERRY_IP}:443", ') \
            + f'[[listener]]\nname = "relay-udp"\naddress = "{FERRY_IP}:3479"\nservice = "relay"\n'
        if args.xdp != "off":
            lab.ferry.exec("sysctl", "-qw", f"net.ipv4.conf.{lab.ferry_if}.forwarding=1")
            # As from a real network: over veth, offloaded checksums would reach XDP unfinished.
            lab.checksums_in_software()
            config += f'[engine]\nxdp = "{args.xdp}"\nxdp_interfaces = ["{lab.ferry_if}"]\n'
        # Plain WireGuard aims at the other LAN's host, or at the other NAT (which keeps port 51820).
        ends = ("10.2.0.2", "10.1.0.2") if args.nat == "none" else ("203.0.113.6", "203.0.113.2")
        ferryd = conftest.Ferryd(config, d, prefix=lab.ferry.prefix() + (["taskset", "-c", "1"] if args.pin else []),
                                 admin_host=ADMIN_IP, admin_port=9100)
        cpu = 0 if args.pin else None
        wg_a = WireGuard(lab.peer_a, "wbencha", "10.99.0.1", d, cpu=cpu)
        wg_b = WireGuard(lab.peer_b, "wbenchb", "10.99.0.2", d, cpu=cpu)
        wg_a.add_peer(wg_b)
        wg_b.add_peer(wg_a)
        try:
            lab.peer_a.exec("wg", "set", wg_a.name, "peer", wg_b.public, "endpoint", f"{ends[0]}:51820")
            lab.peer_b.exec("wg", "set", wg_b.name, "peer", wg_a.public, "endpoint", f"{ends[1]}:51820")
            connect(lab, wg_b)
            watch = {"wireguard-go": pids("wireguard-go wbench"), "ferryd": [ferryd.proc.pid]}
            mbps, cpu = iperf(lab, wg_b, args.seconds, watch)
            results["plain"] = {"ping": ping_stats(lab, wg_b, args.pings), "iperf_mbps": mbps, "cpu_per_second": cpu}

            def with_agents(name, relay_only, proxy, want):
                procs = agents(lab, wg_a, wg_b, d, cert, relay_only, proxy, want)
                try:
                    connect(lab, wg_b)
                    mbps, cpu = iperf(lab, wg_b, args.seconds, dict(watch, agents=[p.pid for p in procs]))
                    results[name] = {"ping": ping_stats(lab, wg_b, args.pings), "iperf_mbps": mbps, "cpu_per_second": cpu}
                finally:
                    stop(procs)
            with_agents("direct", False, False, "direct")
            with_agents("relayed", True, True, "relayed")
            with_agents("native", True, False, "native-relay")
            # Plain WireGuard again, to bracket the agents' runs against the VM's drift.
            lab.peer_a.exec("wg", "set", wg_a.name, "peer", wg_b.public, "endpoint", f"{ends[0]}:51820")
            lab.peer_b.exec("wg", "set", wg_b.name, "peer", wg_a.public, "endpoint", f"{ends[1]}:51820")
            connect(lab, wg_b)
            mbps, cpu = iperf(lab, wg_b, args.seconds, watch)
            results["plain_again"] = {"ping": ping_stats(lab, wg_b, args.pings), "iperf_mbps": mbps, "cpu_per_second": cpu}
            # B's UDP blocked: TURN over TLS through both agents, then the native relay's stream side.
            lab.block_b_now()
            with_agents("blocked_turn_tls", True, True, ("relayed", "relayed"))
            with_agents("blocked_native_stream", True, False, ("native-relay", "native-relay-stream"))
            results["relayed_packets_at_ferryd"] = ferryd.metric("ferry_turn_relayed_packets_total", {"direction": "to_peer"})
            results["native_packets_at_ferryd"] = ferryd.metric("ferry_relay_packets_total")
            results["native_packets_in_xdp"] = ferryd.metric("ferry_xdp_forwarded_packets_total")
        finally:
            wg_a.close()
            wg_b.close()
            ferryd.stop()
            lab.close()
    p, dr, rl, p2 = results["plain"], results["direct"], results["relayed"], results["plain_again"]
    nv = results["native"]
    if p["iperf_mbps"] and p2["iperf_mbps"] and nv["iperf_mbps"]:
        results["native_over_plain_throughput"] = round(nv["iperf_mbps"] / ((p["iperf_mbps"] + p2["iperf_mbps"]) / 2), 3)
    if p["iperf_mbps"] and p2["iperf_mbps"] and rl["iperf_mbps"]:
        results["relayed_over_plain_throughput"] = round(rl["iperf_mbps"] / ((p["iperf_mbps"] + p2["iperf_mbps"]) / 2), 3)
    plain_rtt = (p["ping"]["median_us"] + p2["ping"]["median_us"]) / 2
    results["agent_added_median_rtt_us"] = round(dr["ping"]["median_us"] - plain_rtt, 1)
    if dr["iperf_mbps"] and rl["iperf_mbps"]:
        results["relayed_over_direct_throughput"] = round(rl["iperf_mbps"] / dr["iperf_mbps"], 3)
    if p["iperf_mbps"] and dr["iperf_mbps"]:
        results["direct_over_plain_throughput"] = round(dr["iperf_mbps"] / p["iperf_mbps"], 3)
    bt, bs = results["blocked_turn_tls"], results["blocked_native_stream"]
    if bt["iperf_mbps"] and bs["iperf_mbps"]:
        results["blocked_stream_over_turn_tls_throughput"] = round(bs["iperf_mbps"] / bt["iperf_mbps"], 3)
    results["pinned"] = args.pin
    results["xdp"] = args.xdp
    results["nat"] = args.nat
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
