#!/usr/bin/env python3
"""XDP fast-path benchmark (docs/xdp.md): native-relay forwarding of WireGuard data by the plain C
forwarder (Benchmarks/udp-forward/cforward.c), ferryd in user space, and ferryd with XDP
(generic, native); and TURN ChannelData from clients to a peer (stripped to the data) by ferryd
in user space, with XDP, and coturn; in one run, on Benchmarks/netpair.py's two namespaces: everything the relay
costs (the kernel's UDP path, the XDP program, the server process) lands on CPU 1 and everything
the load costs on CPU 0. Per server: the most packets/s forwarded at <= 0.1% loss, and CPU 1's
busy time per packet at one common rate (from /proc/stat); "packets/s per core" is 1 s over that
time, the rate one core could sustain. Both CPUs' time per packet is printed too: native mode on
a veth runs on the sender's core, out of RPS's reach. The generator sends one datagram per packet
(no GSO: a GSO train crosses a veth as one buffer, which the program passes up), so it, not the
relay, may set the pps ceiling: the per-core figure is the comparison.
Not part of the tests; needs root."""
import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "Tests", "integration"))
sys.path.insert(0, os.path.join(HERE, ".."))
import turnclient as tc  # noqa: E402
import wgrelay  # noqa: E402
from common import sweep, write_ferryd_config  # noqa: E402
from netpair import PEERS_IF, PEERS_IP, PEERS_NS, RELAY_IF, RELAY_IP, RELAY_NS, busy, sh, start  # noqa: E402
import netpair  # noqa: E402

SECRET = "xdp-bench-secret-0123456"
B_INDEX = 0x42
PAYLOAD = 1184  # 1200-byte WireGuard data messages
PASS_OBJECT = os.path.join(HERE, "..", "out", "xdp-pass.o")


def prepare():
    # XDP's route lookup needs a forwarding interface (docs/xdp.md).
    sh("sysctl", "-qw", f"net.ipv4.conf.{RELAY_IF}.forwarding=1", ns=RELAY_NS)
    # Native XDP_TX on a veth hands frames to its peer, which takes them only with an XDP program
    # of its own (a pass-through one; attached for every server, so all are alike).
    sh("ip", "link", "set", "dev", PEERS_IF, "xdp", "obj", PASS_OBJECT, "sec", "xdp", ns=PEERS_NS)
    # Whole checksums from the sender, checked by the sink's kernel: a checksum the XDP program
    # got wrong shows as loss (a veth otherwise passes offloaded, partial checksums along).
    sh("ethtool", "-K", PEERS_IF, "tx", "off", "rx", "off", ns=PEERS_NS)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((PEERS_IP, 0))
        return s.getsockname()[1]


class Port(wgrelay.UDPPort):
    def __init__(self, port=0):
        super().__init__(host=PEERS_IP, port=port)


def ferryd(binary, tmp, xdp, port, sessions):
    engine = f'[engine]\ngro = false\nxdp = "{xdp}"\nxdp_interfaces = ["{RELAY_IF}"]\n' if xdp != "off" else "[engine]\ngro = false\n"
    cfg = write_ferryd_config(tmp, engine + f"""[turn]
static_auth_secrets = ["{SECRET}"]
[relay]
max_sessions = {sessions + 10}
binds_per_second = 1000000
[[listener]]
name = "relay-udp"
address = "{RELAY_IP}:{port}"
service = "relay"
""")
    proc = start([binary, "--config", cfg])
    relay = (RELAY_IP, port)
    deadline = time.time() + 10
    while True:
        probe = Port()
        try:
            probe.send(wgrelay.message(0x001, 0, []), relay)
            probe.recv(0.3)
            return proc
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("ferryd did not start")
        finally:
            probe.close()


def turn_server(binary, tmp, kind, port):
    """ferryd (user space or XDP) or coturn serving TURN over UDP on RELAY_IP:port."""
    if kind == "turn-coturn":
        args = ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "-L", RELAY_IP, "-E", RELAY_IP, "-p", str(port), "-r", "bench",
                "-a", "-u", "test:pass", "--allowed-peer-ip", PEERS_IP, "-m", "1", "--db", os.path.join(tmp, "turndb"),
                "--log-file", "/dev/null", "--no-stdout-log", "--min-port", "40000", "--max-port", "49999",
                "--pidfile", os.path.join(tmp, "turn.pid"), "--no-software-attribute"]
    else:
        xdp = kind.removeprefix("turn-ferryd").removeprefix("-xdp-") or "off"
        engine = "[engine]\n" + (f'xdp = "{xdp}"\nxdp_interfaces = ["{RELAY_IF}"]\n' if xdp != "off" else "")
        args = [binary, "--config", write_ferryd_config(tmp, engine + f"""[turn]
realm = "bench"
relay_ipv4 = "{RELAY_IP}"
port_min = 40000
port_max = 49999
unauthorized_per_second = 0
max_allocations_per_user = 1000
[[turn.user]]
name = "test"
password = "pass"
[policy]
allow = ["{PEERS_IP}/32"]
[[listener]]
name = "turn-udp"
address = "{RELAY_IP}:{port}"
service = "turn"
""")]
    proc = start(args)
    deadline = time.time() + 10
    while True:
        try:
            c = tc.TurnClient((RELAY_IP, port), timeout=0.3, bind=PEERS_IP)
            c.binding()
            c.close()
            return proc
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{kind} did not start")
            time.sleep(0.1)


def channels(server, n, sink_port):
    """n TURN clients, each with an allocation and channel 0x4000 to the sink; their sockets."""
    out = []
    for _ in range(n):
        c = tc.TurnClient(server, "test", "pass", timeout=3, bind=PEERS_IP)
        assert c.allocate([(tc.LIFETIME, struct.pack("!I", 3600))]).ok
        assert c.channel_bind(0x4000, PEERS_IP, sink_port).ok
        c.sock.connect(server)
        out.append(c.sock)
    time.sleep(0.2)  # ferryd writes the kernel table after the batch
    return out


def sessions(relay, n, sink_port):
    """n sessions whose B end is the sink's address, with a handshake each; their A sockets."""
    sink = Port(sink_port)
    out = []
    for i in range(n):
        ka, kb = os.urandom(32), os.urandom(32)
        a = Port()
        assert wgrelay.bind(a, relay, wgrelay.credential(SECRET, ka, "bench"), kb).success
        assert wgrelay.bind(sink, relay, wgrelay.credential(SECRET, kb, "bench"), ka).state == 1
        a.send(wgrelay.initiation(i + 1, kb), relay)
        sink.recv()
        sink.send(wgrelay.response(B_INDEX, i + 1, ka), relay)
        a.recv()
        a.sock.connect(relay)
        out.append(a.sock)
    sink.close()
    time.sleep(0.2)  # ferryd writes the kernel table after the batch
    return out


def blast(bindir, socks, rate, duration, sink_port, turn=False):
    sink = subprocess.Popen(["taskset", "-c", "0", f"{bindir}/sink", str(sink_port), str(duration), PEERS_IP], stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    base = 1000
    for i, s in enumerate(socks):
        os.dup2(s.fileno(), base + i)
    (c0, c1), t0 = busy(), time.time()
    # The same 1200-byte datagrams: WireGuard data, or ChannelData carrying 1196 bytes.
    load = [str(0x4000), str(PAYLOAD + 12), str(rate), str(duration), "1"] if turn else \
        [str(B_INDEX), str(PAYLOAD), str(rate), str(duration), "1", "wg"]
    gen = subprocess.run(["taskset", "-c", "0", f"{bindir}/tgen", str(base), str(len(socks)), *load],
                         capture_output=True, text=True, check=True, pass_fds=range(base, base + len(socks)))
    (d0, d1), t1 = busy(), time.time()
    for i in range(len(socks)):
        os.close(base + i)
    got = int(sink.communicate(timeout=60)[0].strip() or 0)
    sent = int(gen.stdout.strip())
    hz = os.sysconf("SC_CLK_TCK")
    return {"offered": sent / duration, "pps": got / duration, "loss": max(0.0, 1 - got / max(sent, 1)),
            "cpu_us": (d1 - c1) / hz / max(got, 1) * 1e6, "cpu1": (d1 - c1) / hz / (t1 - t0),
            "all_us": (d1 - c1 + d0 - c0) / hz / max(got, 1) * 1e6}


def inner(a):
    rates = [int(r) for r in a.rates.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in a.servers.split(","):
            sink = free_port()
            port = free_port()
            if kind == "cforward":
                proc = start([f"{a.bindir}/cforward", str(port), str(sink), RELAY_IP, PEERS_IP])
                time.sleep(0.3)
                socks = []
                for _ in range(a.sessions):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.bind((PEERS_IP, 0))
                    s.connect((RELAY_IP, port))
                    socks.append(s)
            elif kind.startswith("turn-"):
                proc = turn_server(a.ferryd, tmp, kind, port)
                socks = channels((RELAY_IP, port), a.sessions, sink)
            else:
                proc = ferryd(a.ferryd, tmp, {"ferryd": "off", "ferryd-xdp-generic": "generic", "ferryd-xdp-native": "native"}[kind], port, a.sessions)
                socks = sessions((RELAY_IP, port), a.sessions, sink)
            turn = kind.startswith("turn-")
            best = sweep(kind, rates, lambda rate: blast(a.bindir, socks, rate, a.duration, sink, turn))
            cpu = blast(a.bindir, socks, a.cpu_rate, a.duration, sink, turn)
            for s in socks:
                s.close()
            proc.terminate()
            proc.wait()
            results[kind] = {"best": best["pps"] if best else 0, "cpu": cpu["cpu_us"], "all": cpu["all_us"], "loss": cpu["loss"]}
            print(f"{kind:20s} at {a.cpu_rate / 1000:.0f}k pkt/s: CPU 1 {cpu['cpu_us']:.2f} us/pkt, both CPUs {cpu['all_us']:.2f} us/pkt, "
                  f"loss {cpu['loss'] * 100:.3f}%", flush=True)
    print()
    print(f"{'server':20s} {'max pkt/s @<=0.1% loss':>23s} {'CPU 1 us/pkt @' + str(a.cpu_rate // 1000) + 'k':>18s} {'pkt/s per core':>15s} "
          f"{'both CPUs us/pkt':>17s}")
    for k, r in results.items():
        print(f"{k:20s} {r['best']:23.0f} {r['cpu']:18.2f} {1e6 / max(r['cpu'], 0.01):15.0f} {r['all']:17.2f}")
    c = results.get("cforward")
    for k in ("ferryd", "ferryd-xdp-generic", "ferryd-xdp-native", "turn-ferryd", "turn-ferryd-xdp-generic", "turn-ferryd-xdp-native", "turn-coturn"):
        if k in results and c and results[k]["cpu"] > 0:
            print(f"ratio {k}/C forwarder: packets/s per core {c['cpu'] / results[k]['cpu']:.2f}"
                  f"{' (goal >= 5)' if 'xdp' in k else ''}, max packets/s {results[k]['best'] / max(c['best'], 1):.2f}")
    print("native mode on a veth runs the program in the veth's NAPI on the sending core (CPU 0), where RPS cannot steer it:"
          " its CPU 1 figure is not its cost; compare it by both CPUs' time per packet")
    if any(r["best"] >= rates[-1] * 0.95 for r in results.values()):
        print("note: a server kept up with the highest offered rate; the generator, not the server, set that limit")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ferryd", required=True)
    p.add_argument("--bindir", required=True)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--duration", type=float, default=3)
    p.add_argument("--rates", default="50000,100000,150000,200000,250000,300000")
    p.add_argument("--cpu-rate", type=int, default=100000)
    p.add_argument("--servers", default="cforward,ferryd,ferryd-xdp-generic,ferryd-xdp-native,"
                                        "turn-ferryd,turn-ferryd-xdp-generic,turn-ferryd-xdp-native,turn-coturn")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.inner:
        return inner(a)
    netpair.run_inside(__file__, prepare)


if __name__ == "__main__":
    main()
