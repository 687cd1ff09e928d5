"""Helpers the benchmark drivers share: free ports, a process's CPU time and memory, and the head
of a benchmark ferryd's config."""
import os
import re
import socket

TICK = os.sysconf("SC_CLK_TCK")


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid):
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))


def write_ferryd_config(tmp, body, workers=1):
    """A benchmark ferryd's config file: `workers` unpinned workers (one by default), no drain,
    warnings only, no admin endpoint, then `body` (the [turn] table onwards). Returns its path."""
    path = os.path.join(tmp, "ferry.toml")
    with open(path, "w") as f:
        f.write(f"""[server]
workers = {workers}
pin_workers = false
drain_seconds = 0
[log]
level = "warning"
[admin]
address = ""
""" + body)
    return path


def sweep(name, rates, run):
    """Runs `run(rate)` at each rate in turn until the loss passes 0.1%; returns the last result
    at or under it (None if the first rate lost more). Each result prints as one line."""
    best = None
    for rate in rates:
        r = run(rate)
        print(f"{name:20s} offered {r['offered'] / 1000:6.1f}k  forwarded {r['pps'] / 1000:6.1f}k pkt/s  "
              f"loss {r['loss'] * 100:6.3f}%  cpu {r['cpu_us']:5.2f} us/pkt", flush=True)
        if r["loss"] > 0.001:
            break
        best = r
    return best
