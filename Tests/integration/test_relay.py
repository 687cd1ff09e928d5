"""The native WireGuard relay (docs/relay-protocol.md) against the real ferryd over real sockets,
spoken by wgrelay.py, a client written from the document alone; and stock wireguard-go behind
symmetric NATs relayed through it with no Ferry process on either peer."""
import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess

import pytest


from conftest import free_port, http_get, listener, turn_base, wait_until, binary
import wgrelay
from wgrelay import UDPPort, bind, credential, data, initiation, response

SECRET = "relay-secret-for-tests-0123"


def relay_config(port, extra="", secrets=(SECRET,)):
    listed = ", ".join(f'"{s}"' for s in secrets)
    return turn_base(workers=2).replace('relay_ipv4 = "127.0.0.1"\n', f'relay_ipv4 = "127.0.0.1"\nstatic_auth_secrets = [{listed}]\n') \
        + extra + listener("relay-udp", port, service="relay")


class Pair:
    """Two bound peers a and b with a completed handshake: a's index ia, b's index ib."""

    def __init__(self, relay, network="acme", secret=SECRET):
        self.relay = relay
        self.ka, self.kb = os.urandom(32), os.urandom(32)
        self.a, self.b = UDPPort(), UDPPort()
        self.ca, self.cb = credential(secret, self.ka, network), credential(secret, self.kb, network)
        self.first = bind(self.a, relay, self.ca, self.kb)
        self.second = bind(self.b, relay, self.cb, self.ka)
        self.ia, self.ib = 0x1111, 0x2222

    def handshake(self):
        ini = initiation(self.ia, self.kb)
        self.a.send(ini, self.relay)
        got, src = self.b.recv()
        assert got == ini and src == self.relay, "the initiation arrives as it was sent, from the relay's port"
        resp = response(self.ib, self.ia, self.ka)
        self.b.send(resp, self.relay)
        assert self.a.recv()[0] == resp

    def close(self):
        self.a.close()
        self.b.close()


def nothing_arrives(port, timeout=0.3):
    try:
        port.recv(timeout)
    except socket.timeout:
        return True
    return False


@pytest.fixture
def relay(ferryd_factory):
    port = free_port(socket.SOCK_DGRAM)
    f = ferryd_factory(relay_config(port))
    f.addr = ("127.0.0.1", port)
    return f


def test_two_peers_bind_and_wireguard_messages_pass_as_they_are(relay):
    p = Pair(relay.addr)
    assert p.first.success and p.first.state == 0 and p.first.mapped == p.a.address
    assert p.first.signed_by(p.ca[1]), "a success is signed with the credential's key"
    assert p.second.success and p.second.state == 1
    p.handshake()
    for size in (0, 100, 1388):
        m = data(p.ib, os.urandom(size))
        p.a.send(m, relay.addr)
        assert p.b.recv()[0] == m
        back = data(p.ia, os.urandom(size))
        p.b.send(back, relay.addr)
        assert p.a.recv()[0] == back
    wait_until(lambda: relay.metric("ferry_relay_packets_total") == 8)
    wait_until(lambda: relay.metric("ferry_relay_sessions_active") == 1 and relay.metric("ferry_relay_indices") == 2)
    assert relay.metric("ferry_relay_binds_total", {"result": "challenged"}) == 2
    assert relay.metric("ferry_relay_binds_total", {"result": "waiting"}) == 1
    assert relay.metric("ferry_relay_binds_total", {"result": "active"}) == 1
    status = json.loads(http_get(relay.admin_port, "/v1/status")[1])["native_relay"]
    assert status["active"] == 1 and status["packets_total"] == 8 and status["binds_by_result"]["challenged"] == 2
    page = http_get(relay.admin_port, "/")[1]
    assert 'id="native-relay"' in page or "id=native-relay" in page
    # LIFETIME 0 from both sides ends the session.
    assert bind(p.a, relay.addr, p.ca, p.kb, lifetime=0).success
    assert bind(p.b, relay.addr, p.cb, p.ka, lifetime=0).success
    wait_until(lambda: relay.metric("ferry_relay_sessions") == 0)
    p.a.send(data(p.ib), relay.addr)
    assert nothing_arrives(p.b)
    p.close()


def test_spoofed_and_unbound_sources_get_nothing_through(relay):
    p = Pair(relay.addr)
    p.handshake()
    c = UDPPort()
    # An outsider that learned b's index (an on-path observer would) and a's token.
    c.send(data(p.ib), relay.addr)
    c.send(initiation(0x3333, p.kb), relay.addr)
    assert nothing_arrives(p.b) and nothing_arrives(p.a)
    wait_until(lambda: relay.metric("ferry_relay_drops_total", {"reason": "unknown_index"}) == 1
               and relay.metric("ferry_relay_drops_total", {"reason": "unbound_source"}) == 1)
    # a's own challenge replayed from c's address is refused; c's own cookie needs a's key.
    p.a.send(wgrelay.bind_request(p.ca, p.kb), relay.addr)
    cookie = wgrelay.BindResult(p.a.recv()[0]).cookie
    c.send(wgrelay.bind_request(p.ca, p.kb, cookie), relay.addr)
    again = wgrelay.BindResult(c.recv()[0])
    assert again.code == 401 and again.cookie != cookie
    stolen = (p.ca[0], os.urandom(32))
    r = bind(c, relay.addr, stolen, p.kb)
    assert r.code == 403
    # Expired, and minted with another secret.
    assert bind(c, relay.addr, credential(SECRET, p.ka, "acme", expiry=1), p.kb).code == 403
    assert bind(c, relay.addr, credential("another-secret-0123456789", p.ka, "acme"), p.kb).code == 403
    assert relay.metric("ferry_relay_binds_total", {"result": "wrong_source"}) == 1
    assert relay.metric("ferry_relay_binds_total", {"result": "bad_credential"}) == 2
    assert relay.metric("ferry_relay_binds_total", {"result": "expired"}) == 1
    # The session is untouched: a and b still reach each other, and c still nothing.
    m = data(p.ib, b"still here")
    p.a.send(m, relay.addr)
    assert p.b.recv()[0] == m and nothing_arrives(c)
    c.close()
    p.close()


def test_a_nat_rebinding_is_a_fresh_bind_from_the_new_address(relay):
    p = Pair(relay.addr)
    p.handshake()
    moved = UDPPort()
    moved.send(data(p.ib), relay.addr)
    assert nothing_arrives(p.b)
    r = bind(moved, relay.addr, p.ca, p.kb)
    assert r.success and r.state == 1 and r.mapped == moved.address
    m = data(p.ib, b"from the new port")
    moved.send(m, relay.addr)
    assert p.b.recv()[0] == m
    back = data(p.ia, b"to the new port")
    p.b.send(back, relay.addr)
    assert moved.recv()[0] == back and nothing_arrives(p.a)
    moved.close()
    p.close()


def test_networks_are_apart_and_limits_are_counted(ferryd_factory):
    port = free_port(socket.SOCK_DGRAM)
    f = ferryd_factory(relay_config(port, extra="[relay]\nsessions_per_peer = 1\n"))
    addr = ("127.0.0.1", port)
    ka, kb, kc = os.urandom(32), os.urandom(32), os.urandom(32)
    a, b = UDPPort(), UDPPort()
    assert bind(a, addr, credential(SECRET, ka, "one"), kb).state == 0
    # b binds the same pair of keys in another network: nothing joins.
    assert bind(b, addr, credential(SECRET, kb, "two"), ka).state == 0
    a.send(initiation(1, kb), addr)
    assert nothing_arrives(b)
    # a's second partner is over relay.sessions_per_peer.
    assert bind(a, addr, credential(SECRET, ka, "one"), kc).code == 486
    wait_until(lambda: f.metric("ferry_relay_binds_total", {"result": "quota"}) == 1
               and f.metric("ferry_relay_drops_total", {"reason": "partner_unbound"}) == 1
               and f.metric("ferry_relay_sessions") == 2 and f.metric("ferry_relay_sessions_active") == 0)
    a.close()
    b.close()


def test_malformed_datagrams_are_dropped_and_counted(relay):
    s = UDPPort()
    s.send(bytes([4, 0, 0, 0]) + os.urandom(10), relay.addr)       # data shorter than a keepalive
    s.send(bytes([1, 0, 0, 0]) + os.urandom(100), relay.addr)      # an initiation of the wrong size
    s.send(bytes([0]) + os.urandom(40), relay.addr)                # control, but no magic cookie
    s.send(bytes([9]) + os.urandom(40), relay.addr)                # nobody's first byte
    s.send(wgrelay.message(wgrelay.BIND_METHOD, 0, []), relay.addr)  # a bind with nothing in it
    assert nothing_arrives(s)
    wait_until(lambda: relay.metric("ferry_relay_drops_total", {"reason": "malformed"}) == 2
               and relay.metric("ferry_relay_binds_total", {"result": "malformed"}) == 2
               and relay.metric("ferry_udp_drops_total", {"listener": "relay-udp", "reason": "unclaimed"}) == 1)
    # And STUN Binding on the same port tells a peer its address.
    s.send(wgrelay.message(0x001, 0, []), relay.addr)
    t, tid, attrs = wgrelay.parse(s.recv()[0])
    assert t == 0x0101 and wgrelay.xor_address(attrs[wgrelay.ATTR_XOR_MAPPED], tid) == s.address
    s.close()


def test_signaling_hands_out_relay_credentials_this_relay_accepts(ferryd_factory):
    from test_signal import connect, token
    from conftest import loopback_signal_config
    tcp, relay_port = free_port(), free_port(socket.SOCK_DGRAM)
    config = loopback_signal_config(tcp, "token-secret-0123456789", SECRET).replace(
        'self_relay_urls = [', f'self_relay_urls = ["wgrelay:127.0.0.1:{relay_port}", ') + listener("relay-udp", relay_port, service="relay")
    f = ferryd_factory(config)
    url = f"ws://127.0.0.1:{tcp}/v1/signal"

    async def handouts():
        peers = [await connect(url, make_token=lambda pub: token(pub, network="lab", secret="token-secret-0123456789")) for _ in range(2)]
        out = []
        for p in peers:
            me = next(r for r in p.welcome["relays"] if r["region"] == "self")
            out.append((base64.b64decode(p.key), base64.b64decode(me["relay_token"]), base64.b64decode(me["relay_key"])))
            await p.ws.close()
        return out
    (ka, ta, kya), (kb, tb, kyb) = asyncio.run(handouts())
    assert ta[9:41] == ka and ta[42:] == b"lab", "the token names the peer's key and network"
    a, b = UDPPort(), UDPPort()
    addr = ("127.0.0.1", relay_port)
    assert bind(a, addr, (ta, kya), kb).state == 0
    assert bind(b, addr, (tb, kyb), ka).state == 1
    # a's token with b's key is no credential.
    assert bind(a, addr, (ta, kyb), kb).code == 403
    a.close()
    b.close()


needs_lab = pytest.mark.skipif(not (shutil.which("wireguard-go") and shutil.which("wg") and shutil.which("nft")),
                               reason="needs root, wireguard-go, wireguard-tools and nftables (scripts/setup.sh test)")


class StockPair:
    """Lab.py's namespaces behind symmetric NATs, ferryd serving only the native relay, and two
    stock wireguard-go peers that bound their ends from WireGuard's own port (a raw socket, as
    the agent does: wgrelay.py --raw-port) and have the relay as each other's endpoint. No Ferry
    process runs on either peer."""

    def __init__(self, ferryd_factory, directory, xdp=False):
        from lab import ADMIN_IP, FERRY_IP, Lab, WireGuard
        self.lab = Lab(nat_a="symmetric", nat_b="symmetric")
        self.wgs = []
        try:
            engine = ""
            if xdp:  # test_xdp.py: the fast path on ferryd's interface (which must forward: docs/xdp.md)
                self.lab.ferry.exec("sysctl", "-qw", f"net.ipv4.conf.{self.lab.ferry_if}.forwarding=1")
                self.lab.checksums_in_software()
                engine = f'[engine]\nxdp = "generic"\nxdp_interfaces = ["{self.lab.ferry_if}"]\n'
            config = f'[admin]\naddress = "{ADMIN_IP}:9100"\n[server]\nworkers = 2\ndrain_seconds = 0\n{engine}[turn]\nrealm = "lab"\n' \
                     f'static_auth_secrets = ["{SECRET}"]\n' + listener("relay-udp", 3479, service="relay", host=FERRY_IP)
            self.ferryd = ferryd_factory(config, prefix=self.lab.ferry.prefix(), admin_host=ADMIN_IP, admin_port=9100)
            tag = str(os.getpid() % 10000)
            self.a = WireGuard(self.lab.peer_a, f"wna{tag}", "10.99.0.1", directory)
            self.b = WireGuard(self.lab.peer_b, f"wnb{tag}", "10.99.0.2", directory)
            self.wgs = [self.a, self.b]
            self.mapped, self.outputs = {}, {}
            here = os.path.dirname(os.path.abspath(__file__))
            for ns, me, other, name in ((self.lab.peer_a, self.a, self.b, "a"), (self.lab.peer_b, self.b, self.a, "b")):
                r = ns.exec("python3", os.path.join(here, "wgrelay.py"), "bind", f"{FERRY_IP}:3479", "--secret", SECRET,
                            "--network", "lab", "--key", me.public, "--partner", other.public, "--raw-port", "51820")
                m = re.search(r"mapped=\('([\d.]+)', (\d+)\)", r.stdout)
                assert m and "success=True" in r.stdout and "signed=True" in r.stdout, r.stdout + r.stderr
                self.mapped[name], self.outputs[name] = (m.group(1), int(m.group(2))), r.stdout
                ns.exec("wg", "set", me.name, "peer", other.public, "allowed-ips", f"{other.address}/32",
                        "endpoint", f"{FERRY_IP}:3479", "persistent-keepalive", "5")
        except BaseException:
            self.close()
            raise

    def close(self):
        for w in self.wgs:
            w.close()
        self.lab.close()


@pytest.fixture
def stock_pair(ferryd_factory, tmpdir_path):
    from netns import available
    if not available():
        pytest.skip("ip netns needs root")
    p = StockPair(ferryd_factory, tmpdir_path)
    yield p
    p.close()


@needs_lab
def test_stock_wireguard_behind_symmetric_nats_through_the_native_relay(stock_pair):
    """(a) of issue 21 without any agent: nothing of ours runs on the peers, so nothing of ours
    touches a WireGuard packet there; ferryd's counters carry them."""
    p, f = stock_pair, stock_pair.ferryd
    # The relay saw the NATs' addresses, with ports the NATs picked at random.
    assert p.mapped["a"][0].startswith("203.0.113.") and p.mapped["b"][0].startswith("203.0.113."), p.outputs
    r = p.lab.peer_a.exec("ping", "-c", "5", "-i", "0.2", "-W", "5", p.b.address, check=False)
    assert r.returncode == 0, r.stdout + f.output()
    assert f.metric("ferry_relay_packets_total") >= 12  # handshake, 5 pings and their replies
    assert f.metric("ferry_relay_sessions_active") == 1
    # A bulk transfer through it, checked end to end by WireGuard's own authentication.
    r = p.lab.peer_b.exec("ping", "-c", "20", "-i", "0.05", "-s", "1300", p.a.address, check=False)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout


def test_probe_binds_both_ends_and_echoes_through_the_native_relay(relay):
    url = f"wgrelay:127.0.0.1:{relay.addr[1]}"
    ok = subprocess.run([binary("ferry"), "probe", "--json", "--secret", SECRET, url], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    steps = {s["name"]: s for s in json.loads(ok.stdout)["targets"][0]["steps"]}
    assert steps["stun binding"]["ok"] and steps["relay bind"]["ok"] and steps["relay echo"]["ok"]
    assert steps["relay echo"]["rtt_us"] > 0
    wait_until(lambda: relay.metric("ferry_relay_packets_total") == 1 and relay.metric("ferry_relay_binds_total", {"result": "unbound"}) == 2)
    bad = subprocess.run([binary("ferry"), "probe", "--secret", "not-the-relay-secret-0123", url], capture_output=True, text=True)
    assert bad.returncode == 1 and "403" in bad.stdout, bad.stdout


def test_bench_loads_the_native_relay(relay):
    r = subprocess.run([binary("ferry"), "bench", "--quiet", "--json", "--secret", SECRET, "--allocations", "4", "--rate", "2000",
                        "--duration", "1", f"wgrelay:127.0.0.1:{relay.addr[1]}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["sessions"] == 2 and out["sent"] >= 1500 and out["loss"] <= 0.01, out
    # Every packet the bench counted crossed the relay (plus the two handshakes).
    wait_until(lambda: relay.metric("ferry_relay_packets_total") >= out["received"] + 4)
    wait_until(lambda: relay.metric("ferry_relay_sessions") == 0, what=lambda: "the bench unbinds its sessions")


def spoofed(src, dst, payload):
    """An IPv4 UDP datagram from any source address, as a raw IP_HDRINCL socket sends it."""
    import struct as st
    udp = st.pack(">HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = st.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    return ip + udp


SPOOF = """
import socket, sys
sys.path.insert(0, {here!r})
from test_relay import spoofed
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for payload in [bytes.fromhex(h) for h in {payloads!r}]:
    s.sendto(spoofed(({src!r}, {sport}), ({dst!r}, 3479), payload), ({dst!r}, 0))
"""


@needs_lab
def test_a_spoofer_on_the_path_cannot_take_over_receive_or_break_a_session(stock_pair):
    """(e) of issue 21: from the router between the NATs and ferryd (on the path: it sees every
    packet), an attacker sends binds and WireGuard packets with a bound peer's source address,
    and binds from its own address with the token it saw. It gets no cookie for the peer's
    address, no bind for its own, nothing of the session's traffic; WireGuard drops what it
    injects, and the pings go on."""
    from lab import FERRY_IP
    p, f = stock_pair, stock_pair.ferryd
    here = os.path.dirname(os.path.abspath(__file__))
    assert p.lab.peer_a.exec("ping", "-c", "3", "-i", "0.2", "-W", "5", p.b.address, check=False).returncode == 0
    # What the attacker saw on the wire: a's token (not its key).
    token_a, _ = credential(SECRET, base64.b64decode(p.a.public), "lab")
    kb = base64.b64decode(p.b.public)
    fake = (token_a, os.urandom(32))
    junk = [data(i, os.urandom(64)) for i in range(200)] + [initiation(7, kb)]
    payloads = [wgrelay.bind_request(fake, kb).hex()] + [j.hex() for j in junk]
    pinger = subprocess.Popen(["ip", "netns", "exec", p.lab.peer_a.name, "ping", "-n", "-c", "30", "-i", "0.1", "-W", "2", p.b.address],
                              stdout=subprocess.PIPE, text=True)
    r = p.lab.inet.exec("python3", "-c", SPOOF.format(here=here, payloads=payloads, src=p.mapped["a"][0], sport=p.mapped["a"][1],
                                                      dst=FERRY_IP), check=False)
    assert r.returncode == 0, r.stderr
    # From its own address, with the token it saw: a challenge, then 403 without the key.
    spoofer = p.lab.inet.exec("python3", os.path.join(here, "wgrelay.py"), "bind", f"{FERRY_IP}:3479", "--secret",
                              "not-the-secret-0123456789", "--network", "lab", "--key", p.a.public, "--partner", p.b.public, check=False)
    assert "code=403" in spoofer.stdout, spoofer.stdout + spoofer.stderr
    out, _ = pinger.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    assert f.metric("ferry_relay_binds_total", {"result": "bad_credential"}) >= 1
    assert f.metric("ferry_relay_sessions") == 1 and f.metric("ferry_relay_sessions_active") == 1
    # The injected data did reach b through the relay (a forged source is indistinguishable
    # from a's own, docs/relay-protocol.md, "Security"), and b's WireGuard dropped all of it.
    assert f.metric("ferry_relay_packets_total") >= 200
    # The spoofed bind's challenge went to a's real address, never to the attacker.
    assert f.metric("ferry_relay_binds_total", {"result": "challenged"}) >= 4

def test_a_bind_flood_is_answered_at_the_configured_rate_and_counted(ferryd_factory):
    port = free_port(socket.SOCK_DGRAM)
    f = ferryd_factory(relay_config(port, extra="[relay]\nbinds_per_second = 50\n"))
    addr = ("127.0.0.1", port)
    ka, kb = os.urandom(32), os.urandom(32)
    cred = credential(SECRET, ka, "acme")
    socks = [UDPPort() for _ in range(4)]
    request = wgrelay.bind_request(cred, kb)
    for _ in range(500):
        for s in socks:
            s.send(request, addr)
    answered = 0
    for s in socks:
        while True:
            try:
                s.recv(0.2)
                answered += 1
            except socket.timeout:
                break
    # At most the bucket (one second's worth) and what refilled meanwhile; the rest unanswered.
    assert 40 <= answered <= 150, answered
    wait_until(lambda: f.metric("ferry_relay_binds_total", {"result": "rate_limited"}) >= 2000 - 150)
    assert f.metric("ferry_relay_binds_total", {"result": "challenged"}) == answered
    # STUN Binding is not a bind: still answered; and a bind goes through once the second is over.
    socks[0].send(wgrelay.message(0x001, 0, []), addr)
    assert wgrelay.parse(socks[0].recv()[0])[0] == 0x0101
    import time
    time.sleep(1.1)
    assert bind(socks[1], addr, cred, kb).success
    for s in socks:
        s.close()


def test_a_reload_rotates_the_secrets_native_credentials_are_checked_with(ferryd_factory):
    import signal as sig
    port = free_port(socket.SOCK_DGRAM)
    new_secret = "rotated-relay-secret-0123"
    f = ferryd_factory(relay_config(port))
    addr = ("127.0.0.1", port)
    ka, kb = os.urandom(32), os.urandom(32)
    a = UDPPort()
    assert bind(a, addr, credential(SECRET, ka, "acme"), kb).success
    with open(f.config_path) as fh:
        text = fh.read()
    with open(f.config_path, "w") as fh:
        fh.write(text.replace(f'static_auth_secrets = ["{SECRET}"]', f'static_auth_secrets = ["{new_secret}"]'))
    f.signal(sig.SIGHUP)
    wait_until(lambda: f.metric("ferry_reloads_total", {"result": "ok"}) == 1)
    wait_until(lambda: bind(a, addr, credential(SECRET, ka, "acme"), kb).code == 403)
    assert bind(a, addr, credential(new_secret, ka, "acme"), kb).success
    a.close()
