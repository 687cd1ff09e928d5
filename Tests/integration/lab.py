"""A network of namespaces for end-to-end tests of `ferry tunnel` with real WireGuard
(wireguard-go, since the test kernels have no WireGuard module):

    peerA 10.1.0.2 ── natA ── 203.0.113.2 ┐
                                          inet (router) ── 198.51.100.1 ferryd (3478 udp/tcp, 443 tls)
    peerB 10.2.0.2 ── natB ── 203.0.113.6 ┘                   └ 10.254.77.2 admin, from the test's own namespace

Each NAT masquerades its LAN with nftables: `symmetric` maps every flow to a new random port
(`masquerade random,fully-random`: hole punching cannot work), `preserving` keeps the source
port (endpoint-independent mapping, address- and port-dependent filtering, the usual home
router: hole punching works), `none` routes the LANs without translation (WireGuard's own
endpoints work: the baseline the tunnel benchmark compares with). `block_b` on NAT B drops
all UDP and all TCP but port 443 from its LAN (a network that only lets HTTPS out).

Run by hand: `python3 Tests/integration/lab.py up` builds it (and prints how to enter it),
`python3 Tests/integration/lab.py down` removes every namespace it made.
"""
import os
import re
import subprocess
import sys

from netns import Namespace, run, veth

FERRY_IP = "198.51.100.1"
# The test process reaches ferryd's admin endpoint over a veth of its own (not through the lab).
ADMIN_IP = "10.254.77.2"


class Lab:
    def __init__(self, nat_a="symmetric", nat_b="symmetric", block_b=False):
        self.made = []
        try:
            self._build(nat_a, nat_b, block_b)
        except BaseException:
            self.close()
            raise

    def _build(self, nat_a, nat_b, block_b):
        self.inet = self.ns("li")
        self.ferry = self.ns("lf")
        self.nat_a, self.nat_b = self.ns("lna"), self.ns("lnb")
        self.peer_a, self.peer_b = self.ns("lpa"), self.ns("lpb")
        self.inet.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        # ferry_if: ferryd's one interface toward the peers (the XDP tests attach there).
        _, self.ferry_if = veth(self.inet, "198.51.100.254/24", self.ferry, f"{FERRY_IP}/24")
        self.ferry.exec("ip", "route", "add", "default", "via", "198.51.100.254")
        veth(None, "10.254.77.1/30", self.ferry, f"{ADMIN_IP}/30")
        for nat, peer, wan, gw, lan, mode, block in (
                (self.nat_a, self.peer_a, "203.0.113.2/30", "203.0.113.1", "10.1.0", nat_a, False),
                (self.nat_b, self.peer_b, "203.0.113.6/30", "203.0.113.5", "10.2.0", nat_b, block_b)):
            _, wan_if = veth(self.inet, f"{gw}/30", nat, wan)
            self.wan_b = wan_if  # b's, once the loop is done (block_b_now)
            nat.exec("ip", "route", "add", "default", "via", gw)
            nat.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
            veth(nat, f"{lan}.1/24", peer, f"{lan}.2/24")
            peer.exec("ip", "route", "add", "default", "via", f"{lan}.1")
            if mode == "none":
                # A plain router: the peers' LANs are routed, every address reaches every other.
                self.inet.exec("ip", "route", "add", f"{lan}.0/24", "via", wan.split("/")[0])
                continue
            flags = " random,fully-random" if mode == "symmetric" else ""
            rules = [
                "add table ip lab",
                "add chain ip lab postrouting { type nat hook postrouting priority 100; }",
                f'add rule ip lab postrouting oifname "{wan_if}" masquerade{flags}',
                "add chain ip lab forwarding { type filter hook forward priority 0; }",
                # Unsolicited UDP to the NAT itself is dropped before its conntrack entry is
                # confirmed: otherwise that entry takes the port a LAN host's mapping would
                # reuse, and a port-preserving NAT stops preserving it (real NATs don't do that).
                "add chain ip lab input { type filter hook input priority 0; }",
                f'add rule ip lab input iifname "{wan_if}" meta l4proto udp drop',
            ]
            if block:
                rules += [f'add rule ip lab forwarding iifname != "{wan_if}" meta l4proto udp drop',
                          f'add rule ip lab forwarding iifname != "{wan_if}" tcp dport != 443 drop']
            self._nft(nat, rules)
        self.peer_addresses = {"a": "10.1.0.2", "b": "10.2.0.2"}

    def checksums_in_software(self):
        """The peers' kernels write whole UDP checksums (`ethtool -K tx off`), as packets from a
        real network arrive. Over veth an offloaded checksum reaches ferryd still to be completed
        (CHECKSUM_PARTIAL), and the XDP program passes such packets up (docs/xdp.md)."""
        for ns in (self.peer_a, self.peer_b):
            out = ns.exec("ip", "-o", "link", "show").stdout
            name = next(l.split(": ")[1].split("@")[0] for l in out.splitlines() if ": lo:" not in l)
            ns.exec("ethtool", "-K", name, "tx", "off")

    def block_b_now(self):
        """What block_b does, on a lab already built (the tunnel benchmark measures UDP first)."""
        self._nft(self.nat_b, ["add table ip labblock", "add chain ip labblock forwarding { type filter hook forward priority 0; }",
                               f'add rule ip labblock forwarding iifname != "{self.wan_b}" meta l4proto udp drop',
                               f'add rule ip labblock forwarding iifname != "{self.wan_b}" tcp dport != 443 drop'])

    def _nft(self, ns, rules):
        r = subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], input="\n".join(rules) + "\n",
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"nft in {ns.name}: {r.stderr}")

    def ns(self, prefix):
        n = Namespace(prefix)
        self.made.append(n)
        return n

    def close(self):
        for n in reversed(self.made):
            n.delete()


class WireGuard:
    """A wireguard-go interface in a namespace, with an overlay address."""

    def __init__(self, ns, name, address, directory, cpu=None):
        self.ns, self.name, self.address = ns, name, address
        self.key_path = os.path.join(directory, f"{name}.key")
        key = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
        with open(os.open(self.key_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(key + "\n")
        self.public = subprocess.run(["wg", "pubkey"], input=key, capture_output=True, text=True, check=True).stdout.strip()
        # wireguard-go daemonizes: its output must not be a pipe we wait on (it would stay open).
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        subprocess.run(["ip", "netns", "exec", ns.name, *pin, "wireguard-go", name], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ns.exec("wg", "set", name, "private-key", self.key_path, "listen-port", "51820")
        ns.exec("ip", "addr", "add", f"{address}/24", "dev", name)
        ns.exec("ip", "link", "set", name, "up")

    def add_peer(self, other):
        self.ns.exec("wg", "set", self.name, "peer", other.public, "allowed-ips", f"{other.address}/32")

    def close(self):
        # Deleting the interface ends its wireguard-go process.
        self.ns.exec("ip", "link", "del", self.name, check=False)
        try:
            os.unlink(f"/var/run/wireguard/{self.name}.sock")
        except OSError:
            pass


def main(argv):
    if argv[1:] == ["up"]:
        lab = Lab()
        print("namespaces:", " ".join(n.name for n in lab.made))
        print("enter one with: ip netns exec NAME bash; remove them with: lab.py down")
        return 0
    if argv[1:] == ["down"]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            name = line.split()[0]
            if re.fullmatch(r"(li|lf|lna|lnb|lpa|lpb)\d+", name):
                run("ip", "netns", "del", name, check=False)
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
