#!/usr/bin/env python3
"""TURN over TCP and TLS next to UDP, in one run: ferryd (one worker, pinned to CPU 1) relays
1200-byte ChannelData from SESSIONS clients to a UDP peer, over each transport in turn, with the
generator and sink on CPU 0. TLS is terminated on the client side by a local stunnel (on CPU 0),
so the same C stream generator drives TCP and TLS. Prints relayed packets/s at full offered load,
server CPU per relayed packet at one common rate, and the ratio TLS/UDP; then the resident memory
of IDLE idle TLS connections (handshake done, nothing sent). Not part of the tests."""
import argparse
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "Tests", "integration"))
sys.path.insert(0, os.path.join(HERE, ".."))
import turnclient as tc  # noqa: E402
from common import cpu_seconds, free_tcp_port, free_udp_port, rss_kib, write_ferryd_config  # noqa: E402

USER, PASSWORD = "bench", "bench-password"


def start_ferryd(ferryd, tmp, udp, tcp, tls):
    cfg = write_ferryd_config(tmp, f"""[turn]
realm = "ferry.bench"
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
[tls]
self_signed = true
handshakes_per_second = 0
[stream]
max_connections = 50000
max_connections_per_source = 50000   # every client of the benchmark is 127.0.0.1
[[listener]]
name = "udp"
address = "127.0.0.1:{udp}"
[[listener]]
name = "tcp"
transport = "tcp"
address = "127.0.0.1:{tcp}"
[[listener]]
name = "tls"
transport = "tls"
address = "127.0.0.1:{tls}"
""")
    p = subprocess.Popen(["taskset", "-c", "1", ferryd, "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return p


def sessions(kind, n, port, peer_port):
    out = []
    for _ in range(n):
        if kind == "udp":
            c = tc.TurnClient(("127.0.0.1", port), USER, PASSWORD, timeout=3)
        else:
            c = tc.StreamTurnClient(socket.create_connection(("127.0.0.1", port)), USER, PASSWORD)
        assert c.allocate().ok, kind
        assert c.channel_bind(0x4000, "127.0.0.1", peer_port).ok, kind
        if kind == "udp":
            c.sock.connect(("127.0.0.1", port))
        out.append(c)
    return out


def blast(bindir, pid, kind, socks, rate, duration, size, peer_port):
    sink = subprocess.Popen(["taskset", "-c", "0", f"{bindir}/sink", str(peer_port), str(duration)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    base = 1000
    for i, c in enumerate(socks):
        os.dup2(c.sock.fileno(), base + i)
        os.set_blocking(base + i, True)
    before = cpu_seconds(pid)
    if kind == "udp":
        cmd = [f"{bindir}/tgen", str(base), str(len(socks)), str(0x4000), str(size), str(rate), str(duration), "1"]
    else:
        cmd = [f"{bindir}/streamgen", str(base), str(len(socks)), str(0x4000), str(size), str(rate), str(duration), "16"]
    gen = subprocess.run(["taskset", "-c", "0", *cmd], capture_output=True, text=True, check=True, pass_fds=range(base, base + len(socks)))
    after = cpu_seconds(pid)
    for i in range(len(socks)):
        os.close(base + i)
    got = int(sink.communicate(timeout=60)[0].strip() or 0)
    sent = int(gen.stdout.strip())
    return {"offered": sent / duration, "pps": got / duration, "cpu_us": (after - before) / max(got, 1) * 1e6,
            "loss": max(0.0, 1 - got / max(sent, 1))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ferryd", required=True)
    p.add_argument("--bindir", required=True)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--duration", type=float, default=3)
    p.add_argument("--size", type=int, default=1200)
    p.add_argument("--rate", type=int, default=100000, help="common rate for CPU per packet")
    p.add_argument("--idle", type=int, default=10000)
    a = p.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    udp, tcp, tls, tunnel = free_udp_port(), free_tcp_port(), free_tcp_port(), free_tcp_port()
    with tempfile.TemporaryDirectory() as tmp:
        ferryd = start_ferryd(a.ferryd, tmp, udp, tcp, tls)
        conf = os.path.join(tmp, "stunnel.conf")
        with open(conf, "w") as f:
            f.write(f"foreground = yes\npid =\n[turn]\nclient = yes\naccept = 127.0.0.1:{tunnel}\nconnect = 127.0.0.1:{tls}\nverifyChain = no\n")
        stunnel = subprocess.Popen(["taskset", "-c", "0", "stunnel4", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        results = {}
        try:
            for kind, port in (("udp", udp), ("tcp", tcp), ("tls", tunnel)):
                peer = free_udp_port()
                socks = sessions(kind, a.sessions, port, peer)
                full = blast(a.bindir, ferryd.pid, kind, socks, 0, a.duration, a.size, peer)
                common = blast(a.bindir, ferryd.pid, kind, socks, a.rate, a.duration, a.size, peer)
                results[kind] = (full, common)
                # Streams do not lose: what the generator wrote but the sink did not count was still
                # in stunnel or socket buffers when the window closed (the generator's side limits).
                print(f"{kind}: full load {full['pps'] / 1000:7.1f}k pkt/s relayed of {full['offered'] / 1000:.1f}k written, "
                      f"at {a.rate // 1000}k pkt/s: {common['cpu_us']:.2f} us server CPU per packet", flush=True)
                for c in socks:
                    c.sock.close()
            # Idle TLS connections.
            time.sleep(0.5)
            rss0 = rss_kib(ferryd.pid)
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            held = []
            for _ in range(a.idle):
                s = socket.create_connection(("127.0.0.1", tls))
                held.append(ctx.wrap_socket(s, server_hostname="localhost"))
            time.sleep(1)
            rss1 = rss_kib(ferryd.pid)
            for s in held:
                s.close()
        finally:
            stunnel.kill()
            ferryd.send_signal(signal.SIGINT)
            ferryd.wait(10)
    u, t, s = results["udp"][1]["cpu_us"], results["tcp"][1]["cpu_us"], results["tls"][1]["cpu_us"]
    print()
    print(f"{'transport':10s} {'pkt/s at full load':>19s} {'CPU us/pkt @' + str(a.rate // 1000) + 'k':>15s}")
    for k in ("udp", "tcp", "tls"):
        print(f"{k:10s} {results[k][0]['pps']:19.0f} {results[k][1]['cpu_us']:15.2f}")
    print(f"CPU per packet: TCP/UDP {t / u:.2f}, TLS/UDP {s / u:.2f} (goal <= 2)")
    print(f"{a.idle} idle TLS connections: {rss1 / 1024:.1f} MiB resident in all, {(rss1 - rss0) / 1024:.1f} MiB more than before "
          f"({(rss1 - rss0) * 1024 / a.idle:.0f} B each) (goal <= 300 MiB)")


if __name__ == "__main__":
    main()
