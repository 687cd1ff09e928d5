#!/usr/bin/env python3
"""TURN to TURN benchmark (docs/turn.md, `turn.short_circuit`): two peers that both fell back to
one ferryd send to each other's relayed addresses. SESSIONS sender allocations each bind a channel
to one receiver allocation, which binds a channel back to each of them; the generator
(Benchmarks/turn-relay/tgen.c) sends ChannelData from the senders, and the receiver's client socket
is handed to the sink, which counts the ChannelData that arrives. On Benchmarks/netpair.py's two
namespaces: ferryd (one worker) in xbr on CPU 1, the clients, generator and sink in xbp on CPU 0,
so the sink's receive path is not charged to the relay's core as it would be on loopback.

Run twice, side by side: with the short circuit (delivered inside ferryd) and without (a send on
the sender's relayed socket, the kernel's loopback, a read on the receiver's, then the send to the
client). Reported: CPU 1's busy time per delivered packet at one common rate (/proc/stat: the
kernel's work for what reaches ferryd, its sends and its own loopback hop lands there too), and
the most packets/s at <= 0.1% loss. Not part of the tests; needs root.

--across: ferryd with two workers (both on CPU 1), every sender's allocation on the other worker
than the receiver's (made until the relayed ports' blocks say so): the short circuit then hands
each batch to the receiver's worker (docs/turn.md), against the kernel's path between them."""
import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "Tests", "integration"))
sys.path.insert(0, os.path.join(HERE, ".."))
import turnclient as tc  # noqa: E402
from common import sweep, write_ferryd_config  # noqa: E402
from netpair import PEERS_IP, RELAY_IP, busy, start  # noqa: E402
import netpair  # noqa: E402


class Ferryd:
    def __init__(self, binary, tmp, short_circuit, sessions, workers=1):
        self.port = 3478
        self.workers = workers
        cfg = write_ferryd_config(tmp, f"""[turn]
realm = "bench"
relay_ipv4 = "{RELAY_IP}"
port_min = 20000
port_max = 60000
short_circuit = {"true" if short_circuit else "false"}
max_channels_per_allocation = {sessions + 1}
max_permissions_per_allocation = 4
max_allocations_per_user = 1000
unauthorized_per_second = 0
[[turn.user]]
name = "u"
password = "p"
[[listener]]
name = "turn-udp"
address = "{RELAY_IP}:{self.port}"
service = "turn"
""", workers=workers)
        self.proc = start([binary, "--config", cfg])
        deadline = time.time() + 10
        while True:
            try:
                c = tc.TurnClient((RELAY_IP, self.port), timeout=0.3, bind=PEERS_IP)
                c.binding()
                c.close()
                return
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("ferryd did not start")
                time.sleep(0.1)

    def pairs(self, n):
        """n senders, each with channel 0x4000 to the receiver; the receiver with a channel back
        to each. Returns the senders (connected) and the receiver's client port."""
        server = (RELAY_IP, self.port)
        receiver = tc.TurnClient(server, "u", "p", timeout=3, bind=PEERS_IP)
        r = receiver.allocate([(tc.LIFETIME, struct.pack("!I", 3600))])
        assert r.ok, r.code
        relayed = r.addresses(tc.XOR_RELAYED_ADDRESS)[0]
        assert receiver.create_permission(RELAY_IP).ok
        senders = []
        worker = lambda port: min((port - 20000) // (40001 // self.workers), self.workers - 1)  # noqa: E731
        while len(senders) < n:
            i = len(senders)
            c = tc.TurnClient(server, "u", "p", timeout=3, bind=PEERS_IP)
            r = c.allocate([(tc.LIFETIME, struct.pack("!I", 3600))])
            assert r.ok, r.code
            if self.workers > 1 and worker(r.addresses(tc.XOR_RELAYED_ADDRESS)[0][1]) == worker(relayed[1]):
                c.refresh(0)  # --across: only senders on the other worker
                c.close()
                continue
            assert c.create_permission(RELAY_IP).ok
            assert c.channel_bind(0x4000, *relayed).ok
            assert receiver.channel_bind(0x4001 + i, *r.addresses(tc.XOR_RELAYED_ADDRESS)[0]).ok
            c.sock.connect(server)
            senders.append(c)
        port = receiver.sock.getsockname()[1]
        receiver.sock.close()  # the sink binds this port: the allocation is the 5-tuple's
        return senders, port

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def blast(bindir, senders, sink_port, rate, duration, size, gen_gso=16):
    sink = subprocess.Popen(["taskset", "-c", "0", f"{bindir}/sink", str(sink_port), str(duration), PEERS_IP], stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    base = 1000
    for i, c in enumerate(senders):
        os.dup2(c.sock.fileno(), base + i)
    _, b0 = busy()
    gen = subprocess.run(["taskset", "-c", "0", f"{bindir}/tgen", str(base), str(len(senders)), str(0x4000), str(size), str(rate),
                          str(duration), str(gen_gso)], capture_output=True, text=True, check=True, pass_fds=range(base, base + len(senders)))
    _, b1 = busy()
    for i in range(len(senders)):
        os.close(base + i)
    got = int(sink.communicate(timeout=60)[0].strip() or 0)
    sent = int(gen.stdout.strip())
    hz = os.sysconf("SC_CLK_TCK")
    return {"offered": sent / duration, "pps": got / duration, "loss": max(0.0, 1 - got / max(sent, 1)),
            "cpu_us": (b1 - b0) / hz / max(got, 1) * 1e6}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ferryd", required=True)
    p.add_argument("--bindir", required=True)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--duration", type=float, default=3)
    p.add_argument("--size", type=int, default=1200)
    p.add_argument("--rates", default="50000,100000,150000,200000,250000,300000,400000")
    p.add_argument("--cpu-rate", type=int, default=50000)
    p.add_argument("--rounds", type=int, default=5, help="runs at --cpu-rate per path (the median is reported)")
    p.add_argument("--gen-gso", type=int, default=16,
                   help="datagrams per generator send, in runs from one sender (1: senders interleave, so the kernel path's relay hop forms no GSO trains)")
    p.add_argument("--across", action="store_true", help="two workers, senders on the other one than the receiver")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if not a.inner:
        netpair.run_inside(__file__)
    rates = [int(r) for r in a.rates.split(",")]
    results = {}
    modes = (("kernel path", False), ("short circuit", True))
    with tempfile.TemporaryDirectory() as tmp:
        # One server at a time (they share the listener's port).
        for name, short in modes:
            f = Ferryd(a.ferryd, tmp, short, a.sessions, workers=2 if a.across else 1)
            senders, sink = f.pairs(a.sessions)
            best = sweep(name, rates, lambda rate: blast(a.bindir, senders, sink, rate, a.duration, a.size, a.gen_gso))
            cpus = []
            for _ in range(a.rounds):
                cpu = blast(a.bindir, senders, sink, a.cpu_rate, a.duration, a.size, a.gen_gso)
                cpus.append(cpu["cpu_us"])
                print(f"{name:14s} at {a.cpu_rate / 1000:.0f}k pkt/s: CPU 1 {cpu['cpu_us']:.2f} us/pkt, loss {cpu['loss'] * 100:.3f}%", flush=True)
            for c in senders:
                c.sock.close()
            f.stop()
            results[name] = {"best": best["pps"] if best else 0, "cpu": sorted(cpus)[len(cpus) // 2]}
    print()
    print(f"{'path':14s} {'max pkt/s @<=0.1% loss':>23s} {'CPU 1 us/pkt @' + str(a.cpu_rate // 1000) + 'k (median)':>27s}")
    for k, r in results.items():
        print(f"{k:14s} {r['best']:23.0f} {r['cpu']:27.2f}")
    k, s = results["kernel path"], results["short circuit"]
    print(f"CPU per packet saved by the short circuit: {(1 - s['cpu'] / k['cpu']) * 100:.0f}% (goal >= 30%); "
          f"max packets/s {s['best'] / max(k['best'], 1):.2f}x")


if __name__ == "__main__":
    main()
