"""`ferry tunnel` end to end: real WireGuard (wireguard-go) in network namespaces behind
nftables NATs (lab.py), ferryd in a third namespace, and `ping` across the WireGuard interfaces.
(a) both NATs symmetric: only the relay works; (b) one side lets only TCP 443 out: TLS on 443;
(c) port-preserving NATs: hole punching from WireGuard's own port works, the pair is handed to
WireGuard, and neither the relay nor the agents carry data; (d) ferryd restarted mid-ping:
traffic resumes within 10 s."""
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import binary, wait_until
from lab import ADMIN_IP, FERRY_IP, Lab, WireGuard
from netns import available

TOKEN_SECRET = "lab-token-secret-0123456789"
REST_SECRET = "lab-rest-secret-0123456789"

pytestmark = pytest.mark.skipif(not (available() and shutil.which("wireguard-go") and shutil.which("wg") and shutil.which("nft")),
                                reason="needs root, wireguard-go, wireguard-tools and nftables (scripts/setup.sh test)")


def lab_certificate(directory):
    cert, key = os.path.join(directory, "lab.pem"), os.path.join(directory, "lab.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=ferry-lab", "-addext", f"subjectAltName=IP:{FERRY_IP}", "-days", "2",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def ferryd_config(cert, key):
    return f"""
[admin]
address = "{ADMIN_IP}:9100"
[server]
workers = 2
drain_seconds = 0
[turn]
realm = "lab"
relay_ipv4 = "{FERRY_IP}"
static_auth_secrets = ["{REST_SECRET}"]
[[tls.certificate]]
certificate = "{cert}"
key = "{key}"
[signal]
enabled = true
token_secrets = ["{TOKEN_SECRET}"]
self_relay_urls = ["turn:{FERRY_IP}:3478?transport=udp", "turn:{FERRY_IP}:3478?transport=tcp", "turns:{FERRY_IP}:443?transport=tcp"]
[[listener]]
name = "turn-udp"
address = "{FERRY_IP}:3478"
[[listener]]
name = "turn-tcp"
address = "{FERRY_IP}:3478"
transport = "tcp"
[[listener]]
name = "turn-tls"
address = "{FERRY_IP}:443"
transport = "tls"
"""


class Setup:
    def __init__(self, ferryd_factory, directory, nat="symmetric", block_b=False, static_endpoints=False, relay_only=False,
                 extra_args=()):
        self.directory = directory
        self.lab = Lab(nat_a=nat, nat_b=nat, block_b=block_b)
        self.cert, self.key = lab_certificate(directory)
        self.ferryd_factory = ferryd_factory
        self.ferryd = self.start_ferryd()
        tag = str(os.getpid() % 10000)
        self.wg_a = WireGuard(self.lab.peer_a, f"wla{tag}", "10.99.0.1", directory)
        self.wg_b = WireGuard(self.lab.peer_b, f"wlb{tag}", "10.99.0.2", directory)
        self.wg_a.add_peer(self.wg_b)
        self.wg_b.add_peer(self.wg_a)
        if static_endpoints:
            # As a WireGuard configuration with Endpoint= lines (the LANs are routed: nat="none").
            self.lab.peer_a.exec("wg", "set", self.wg_a.name, "peer", self.wg_b.public, "endpoint", "10.2.0.2:51820")
            self.lab.peer_b.exec("wg", "set", self.wg_b.name, "peer", self.wg_a.public, "endpoint", "10.1.0.2:51820")
        self.agents = []
        for ns, wg, name in ((self.lab.peer_a, self.wg_a, "a"), (self.lab.peer_b, self.wg_b, "b")):
            token = subprocess.run([binary("ferry"), "token", "--secret", TOKEN_SECRET, "--network", "lab", "--peer", wg.public],
                                   capture_output=True, text=True, check=True).stdout.strip()
            status = os.path.join(directory, f"status-{name}.json")
            log = open(os.path.join(directory, f"agent-{name}.log"), "w")
            if name == "a":
                args = ["--interface", wg.name, "--signal", f"wss://{FERRY_IP}:443/v1/signal", "--token", token,
                        "--ca", self.cert, "--status-file", status, "--state-file", status + ".state"]
            else:
                # Agent B reads the same settings from a config file (token in a file of its own).
                token_file, config = os.path.join(directory, "b.token"), os.path.join(directory, "tunnel-b.toml")
                with open(token_file, "w") as f:
                    f.write(token + "\n")
                with open(config, "w") as f:
                    f.write(f'interface = "{wg.name}"\nsignal = "wss://{FERRY_IP}:443/v1/signal"\ntoken_file = "{token_file}"\n'
                            f'ca = "{self.cert}"\nstatus_file = "{status}"\nstate_file = "{status}.state"\n')
                args = ["--config", config]
            if relay_only:
                args.append("--relay-only")
            args += list(extra_args)
            p = subprocess.Popen(["ip", "netns", "exec", ns.name, binary("ferry"), "tunnel", "run", *args],
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.agents.append((p, log, status, name))

    def start_ferryd(self):
        return self.ferryd_factory(ferryd_config(self.cert, self.key), prefix=self.lab.ferry.prefix(),
                                   admin_host=ADMIN_IP, admin_port=9100)

    def status(self, name):
        path = os.path.join(self.directory, f"status-{name}.json")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def path(self, name):
        s = self.status(name)
        return s["peers"][0]["path"] if s and s["peers"] else None

    def logs(self):
        out = ""
        for _, log, _, name in self.agents:
            log.flush()
            with open(os.path.join(self.directory, f"agent-{name}.log")) as f:
                out += f"--- agent {name}\n" + f.read()[-4000:]
        return out

    def ping(self, count=5, interval=0.2, timeout=2):
        return subprocess.run(["ip", "netns", "exec", self.lab.peer_a.name, "ping", "-n", "-c", str(count), "-i", str(interval),
                               "-W", str(timeout), self.wg_b.address], capture_output=True, text=True)

    def wait_for_ping(self, timeout=40):
        wait_until(lambda: self.ping(count=1, timeout=1).returncode == 0, timeout=timeout, interval=0.5,
                   what=lambda: "no ping across WireGuard:\n" + self.logs())

    def ping_through_a_restart(self):
        """Pings every 0.1 s for 25 s while ferryd is restarted after 3: traffic must resume within 10 s."""
        ping = subprocess.Popen(["ip", "netns", "exec", self.lab.peer_a.name, "ping", "-n", "-D", "-i", "0.1", "-W", "1", "-c", "250",
                                 self.wg_b.address], stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        self.ferryd.stop()
        self.ferryd = self.start_ferryd()
        out, _ = ping.communicate(timeout=60)
        seqs = sorted(int(m) for m in re.findall(r"icmp_seq=(\d+)", out))
        assert seqs and seqs[-1] >= 240, out[-2000:] + self.logs()
        gaps = [b - a for a, b in zip(seqs, seqs[1:])]
        assert max(gaps) * 0.1 <= 10, f"longest outage {max(gaps) * 0.1:.1f} s\n" + self.logs()

    def relayed_packets(self):
        return self.ferryd.metric("ferry_turn_relayed_packets_total", {"direction": "to_peer"}) or 0

    def close(self):
        for p, log, _, _ in getattr(self, "agents", []):
            if p.poll() is None:
                os.killpg(p.pid, 15)
                p.wait(5)
            log.close()
        for name in ("wg_a", "wg_b"):
            if hasattr(self, name):
                getattr(self, name).close()
        if hasattr(self, "ferryd"):
            self.ferryd.stop()
        if hasattr(self, "lab"):
            self.lab.close()


def setups(ferryd_factory, tmpdir_path, cls):
    """A fixture's body: makes `cls` setups on demand, closes every one made (a half-built one too)."""
    made = []

    def make(**kw):
        s = cls.__new__(cls)
        made.append(s)
        s.__init__(ferryd_factory, tmpdir_path, **kw)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def setup(ferryd_factory, tmpdir_path):
    yield from setups(ferryd_factory, tmpdir_path, Setup)


def test_a_symmetric_nats_ping_through_the_relay(setup):
    s = setup(nat="symmetric")
    s.wait_for_ping()
    r = s.ping(count=20, interval=0.05)
    assert " 0% packet loss" in r.stdout, r.stdout + s.logs()
    assert s.path("a") == "relayed" and s.path("b") == "relayed", s.logs()
    assert s.relayed_packets() >= 40, "the pings crossed the relay both ways"
    status = subprocess.run([binary("ferry"), "tunnel", "status", "--status-file", os.path.join(s.directory, "status-a.json")],
                            capture_output=True, text=True).stdout
    assert "relayed" in status and s.wg_b.public[:8] in status, status


def test_b_only_https_out_relays_over_tls_on_443(setup):
    s = setup(nat="symmetric", block_b=True)
    s.wait_for_ping()
    r = s.ping(count=10, interval=0.1)
    assert " 0% packet loss" in r.stdout, r.stdout + s.logs()
    status_b = s.status("b")
    assert status_b["relay"].startswith(f"tls {FERRY_IP}:443"), status_b
    assert s.path("b") == "relayed"


def test_c_hole_punching_takes_the_direct_path(setup):
    s = setup(nat="preserving")
    s.wait_for_ping()

    def handed(name, nat):
        st = s.status(name)
        return st and st["peers"] and st["peers"][0]["path"] == "direct" and (st["peers"][0].get("wireguard_endpoint") or "").startswith(nat)
    # ICE ran on WireGuard's own port (the shared port): the pair it punched through both NATs is
    # WireGuard's, so WireGuard gets it and both agents step off the path.
    wait_until(lambda: handed("a", "203.0.113.6:") and handed("b", "203.0.113.2:"), timeout=20, what=s.logs)
    assert s.status("a")["shared_port"] == "udp 51820"
    before = s.relayed_packets()
    carried = [s.status(n)["peers"][0]["tx_packets"] + s.status(n)["peers"][0]["rx_packets"] for n in ("a", "b")]
    r = s.ping(count=100, interval=0.02)
    assert " 0% packet loss" in r.stdout, r.stdout
    assert s.relayed_packets() == before, "direct traffic never touches the relay"
    time.sleep(1.2)  # one status rewrite
    assert [s.status(n)["peers"][0]["tx_packets"] + s.status(n)["peers"][0]["rx_packets"] for n in ("a", "b")] == carried, \
        "WireGuard talks to the peer's NAT itself: nothing crosses the agents"


def test_d_a_restarted_relay_carries_traffic_again_within_10s(setup):
    s = setup(nat="symmetric")
    s.wait_for_ping()
    s.ping_through_a_restart()


def test_e_a_direct_path_to_a_host_address_is_handed_to_wireguard(setup):
    s = setup(nat="none")
    s.wait_for_ping()

    def handed(name, want):
        st = s.status(name)
        return st and st["peers"] and st["peers"][0].get("wireguard_endpoint") == want
    wait_until(lambda: handed("a", "10.2.0.2:51820") and handed("b", "10.1.0.2:51820"), timeout=15, what=s.logs)
    endpoint = s.lab.peer_a.exec("wg", "show", s.wg_a.name, "endpoints").stdout
    assert "10.2.0.2:51820" in endpoint, endpoint
    before = s.status("a")["peers"][0]["tx_packets"]
    r = s.ping(count=50, interval=0.02)
    assert " 0% packet loss" in r.stdout, r.stdout
    time.sleep(1.2)  # one status rewrite
    assert s.status("a")["peers"][0]["tx_packets"] == before, "WireGuard talks to the peer itself: nothing crosses the agent"


def test_f_a_handoff_that_gets_no_answer_is_taken_back(setup):
    # Proxy mode: ICE on the agents' own sockets finds the host path, WireGuard's port cannot use it.
    s = setup(nat="none", extra_args=["--proxy"])
    # WireGuard's own port is unreachable between the peers (a firewall), the agents' ports are not.
    r = subprocess.run(["ip", "netns", "exec", s.lab.nat_b.name, "nft", "-f", "-"], text=True, capture_output=True,
                       input="add table ip lab\nadd chain ip lab forwarding { type filter hook forward priority 0; }\n"
                             "add rule ip lab forwarding udp dport 51820 drop\nadd rule ip lab forwarding udp sport 51820 drop\n")
    assert r.returncode == 0, r.stderr
    s.wait_for_ping(timeout=60)
    wait_until(lambda: "taken back" in s.logs(), timeout=20, what=s.logs)
    r = s.ping(count=20, interval=0.05)
    assert " 0% packet loss" in r.stdout, r.stdout + s.logs()
    assert s.status("a")["peers"][0]["wireguard_endpoint"] is None


def test_g_a_stopped_agent_gives_wireguard_its_endpoints_back(setup):
    s = setup(nat="none", static_endpoints=True, relay_only=True)
    s.wait_for_ping()
    wait_until(lambda: s.path("a") == "relayed" and s.path("b") == "relayed", timeout=20, what=s.logs)
    endpoint_a = lambda: s.lab.peer_a.exec("wg", "show", s.wg_a.name, "endpoints").stdout
    # WireGuard roams to the source of the peer's packets: with both endpoints reachable, a packet
    # sent before the other agent pointed its WireGuard moves the pair onto the direct path. The
    # agent points it back (every 2 s); here the roam is made by hand.
    wait_until(lambda: "127.0.0.1:" in endpoint_a(), timeout=6, what=s.logs)
    s.lab.peer_a.exec("wg", "set", s.wg_a.name, "peer", s.wg_b.public, "endpoint", "10.2.0.2:51820")
    wait_until(lambda: "127.0.0.1:" in endpoint_a(), timeout=6, what=s.logs)
    assert "WireGuard roamed to 10.2.0.2:51820, past the agent; pointed back" in s.logs()
    for p, _, _, _ in s.agents:
        os.killpg(p.pid, 15)
        assert p.wait(10) == 0, s.logs()
    assert "10.2.0.2:51820" in s.lab.peer_a.exec("wg", "show", s.wg_a.name, "endpoints").stdout, s.logs()
    assert "10.1.0.2:51820" in s.lab.peer_b.exec("wg", "show", s.wg_b.name, "endpoints").stdout, s.logs()
    assert "endpoint restored to 10.2.0.2:51820" in s.logs()
    # WireGuard alone again, on the endpoints it was configured with.
    r = s.ping(count=10, interval=0.1)
    assert " 0% packet loss" in r.stdout, r.stdout
