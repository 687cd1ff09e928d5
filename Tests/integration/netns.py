"""Network namespaces for tests that need more than loopback: a relay on a private address, peers
behind NAT (scripts/netns-lab.sh builds the WireGuard topologies from the same pieces). Needs
root, which the test machines have; tests using it skip where `ip netns` is refused."""
import itertools
import os
import subprocess

import pytest

_counter = itertools.count()


def run(*args, check=True, ns=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


def unique(prefix):
    """A name short enough for an interface (15 bytes) and unique in this run and machine."""
    return f"{prefix}{os.getpid() % 10000}{next(_counter)}"


class Namespace:
    def __init__(self, prefix="fe"):
        self.name = unique(prefix)
        run("ip", "netns", "add", self.name)
        run("ip", "link", "set", "lo", "up", ns=self.name)

    def exec(self, *args, check=True):
        return run(*args, check=check, ns=self.name)

    def prefix(self):
        """A command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def delete(self):
        run("ip", "netns", "del", self.name, check=False)


def veth(a, a_addr, b, b_addr):
    """A veth pair between namespaces a and b (None is the test's own namespace), with the given
    addresses (CIDR notation) and up. Returns the two interface names."""
    na, nb = unique("va"), unique("vb")
    run("ip", "link", "add", na, "type", "veth", "peer", "name", nb)
    for ns, name, addr in ((a, na, a_addr), (b, nb, b_addr)):
        if ns is not None:
            run("ip", "link", "set", name, "netns", ns.name)
        run("ip", "addr", "add", addr, "dev", name, ns=ns.name if ns else None)
        run("ip", "link", "set", name, "up", ns=ns.name if ns else None)
    return na, nb


def available():
    r = subprocess.run(["ip", "netns", "add", "ferry-probe-ns"], capture_output=True)
    subprocess.run(["ip", "netns", "del", "ferry-probe-ns"], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def namespaces():
    """Namespaces made by a test, deleted after it (their veth ends go with them)."""
    if not available():
        pytest.skip("ip netns needs root")
    made = []

    def make(prefix="fe"):
        ns = Namespace(prefix)
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.delete()
