"""Two network namespaces joined by one veth pair, for benchmarks that must keep the relay's costs
apart from the load's (Benchmarks/xdp, Benchmarks/turn-to-turn):

    namespace xbp (10.66.0.2): clients, generator and sink, CPU 0 ── veth ── namespace xbr (10.66.0.1): the relay, CPU 1

RPS steers each side's receive processing to its own CPU, so what the relay costs (the kernel's
receive path for what reaches it, its sends, the server) lands on CPU 1, and what the load costs
on CPU 0; on loopback the relay's sends would also pay for the sink's receive path. A benchmark
runs itself again inside xbp (`inner`) and starts the relay with `start`."""
import os
import subprocess
import sys

RELAY_NS, PEERS_NS = "xbr", "xbp"
RELAY_IP, PEERS_IP = "10.66.0.1", "10.66.0.2"
RELAY_IF, PEERS_IF = "xbr0", "xbp0"


def sh(*args, ns=None, check=True):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def up():
    down()
    for ns in (RELAY_NS, PEERS_NS):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("ip", "link", "add", RELAY_IF, "type", "veth", "peer", "name", PEERS_IF)
    for ns, name, addr, cpus in ((RELAY_NS, RELAY_IF, RELAY_IP, "2"), (PEERS_NS, PEERS_IF, PEERS_IP, "1")):
        sh("ip", "link", "set", name, "netns", ns)
        sh("ip", "addr", "add", f"{addr}/24", "dev", name, ns=ns)
        sh("ip", "link", "set", name, "up", ns=ns)
        sh("sh", "-c", f"echo {cpus} > /sys/class/net/{name}/queues/rx-0/rps_cpus", ns=ns)


def down():
    for ns in (RELAY_NS, PEERS_NS):
        sh("ip", "netns", "del", ns, check=False)


def busy():
    """Busy jiffies (everything but idle and iowait) of CPU 0 and CPU 1, system-wide."""
    out = {}
    for line in open("/proc/stat"):
        if line.startswith(("cpu0 ", "cpu1 ")):
            f = [int(x) for x in line.split()[1:]]
            out[line[:4]] = sum(f) - f[3] - f[4]
    return out["cpu0"], out["cpu1"]


def start(args):
    """A relay process in xbr on CPU 1."""
    return subprocess.Popen(["ip", "netns", "exec", RELAY_NS, "taskset", "-c", "1", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_inside(script, prepare=None):
    """Builds the namespaces, runs `script --inner ARGS` inside xbp, removes them; exits with its status."""
    up()
    try:
        if prepare:
            prepare()
        r = subprocess.run(["ip", "netns", "exec", PEERS_NS, sys.executable, os.path.abspath(script), "--inner", *sys.argv[1:]])
        sys.exit(r.returncode)
    finally:
        down()
