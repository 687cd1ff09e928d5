"""The native relay's stream side (docs/relay-protocol.md, "Stream side"): a session end bound over
TCP or TLS on a TURN stream listener, for a peer whose UDP is blocked, spoken by wgrelay.py (written
from the document alone); UDP↔stream and stream↔stream sessions, the attacks a stream opens, and
stock wireguard-go with UDP blocked on one side."""
import json
import os
import shutil
import socket
import struct
import subprocess

import pytest

from conftest import free_port, http_get, listener, turn_base, wait_until
from wgrelay import StreamPort, UDPPort, bind, credential, data, initiation, response, message
from test_relay import SECRET, nothing_arrives


class Relay:
    def __init__(self, ferryd_factory, extra=""):
        self.udp, self.tcp, self.tls = free_port(socket.SOCK_DGRAM), free_port(), free_port()
        config = turn_base(workers=2).replace('relay_ipv4 = "127.0.0.1"\n', f'relay_ipv4 = "127.0.0.1"\nstatic_auth_secrets = ["{SECRET}"]\n') \
            + "[tls]\nself_signed = true\n" + extra + listener("relay-udp", self.udp, service="relay") \
            + listener("turn-tcp", self.tcp, "tcp", service="turn") + listener("turn-tls", self.tls, "tls", service="turn")
        self.f = ferryd_factory(config)
        self.addr = ("127.0.0.1", self.udp)

    def stream(self, tls=True):
        return StreamPort(("127.0.0.1", self.tls if tls else self.tcp), tls=tls)


@pytest.fixture
def relay(ferryd_factory):
    return Relay(ferryd_factory)


def exchange(relay, a_send, a_recv, b_send, b_recv, ka, kb):
    """A WireGuard handshake and data both ways between a and b through the relay."""
    ini = initiation(0x1111, kb)
    a_send(ini)
    assert b_recv() == ini, "the initiation arrives as it was sent"
    resp = response(0x2222, 0x1111, ka)
    b_send(resp)
    assert a_recv() == resp
    for size in (0, 100, 1388):
        m = data(0x2222, os.urandom(size))
        a_send(m)
        assert b_recv() == m
        back = data(0x1111, os.urandom(size))
        b_send(back)
        assert a_recv() == back


def test_a_udp_end_and_a_stream_end_make_a_session(relay):
    f = relay.f
    ka, kb = os.urandom(32), os.urandom(32)
    a, b = UDPPort(), relay.stream()
    ca, cb = credential(SECRET, ka, "acme"), credential(SECRET, kb, "acme")
    assert bind(a, relay.addr, ca, kb).state == 0
    # Over a stream the bind is challenged as over UDP, then succeeds, signed.
    got = bind(b, None, cb, ka)
    assert got.success and got.state == 1 and got.signed_by(cb[1])
    assert f.metric("ferry_relay_binds_total", {"result": "challenged"}) == 2
    exchange(relay, lambda m: a.send(m, relay.addr), lambda: a.recv()[0], b.send_wg, b.recv_wg, ka, kb)
    wait_until(lambda: f.metric("ferry_relay_packets_total") == 8 and f.metric("ferry_relay_streams_total") == 1)
    wait_until(lambda: f.metric("ferry_relay_sessions_active") == 1)
    assert json.loads(http_get(f.admin_port, "/v1/status")[1])["native_relay"]["streams_total"] == 1
    # The stream closing unbinds its end: the UDP end's packets go nowhere, and are counted.
    b.close()
    wait_until(lambda: f.metric("ferry_relay_sessions_active") == 0 and f.metric("ferry_relay_sessions") == 1)
    a.send(data(0x2222), relay.addr)
    wait_until(lambda: f.metric("ferry_relay_drops_total", {"reason": "unknown_index"}) == 1)
    a.close()


def test_two_stream_ends_one_over_tcp_one_over_tls(relay):
    ka, kb = os.urandom(32), os.urandom(32)
    a, b = relay.stream(tls=False), relay.stream()
    assert bind(a, None, credential(SECRET, ka, "acme"), kb).state == 0
    assert bind(b, None, credential(SECRET, kb, "acme"), ka).state == 1
    exchange(relay, a.send_wg, a.recv_wg, b.send_wg, b.recv_wg, ka, kb)
    wait_until(lambda: relay.f.metric("ferry_relay_packets_total") == 8 and relay.f.metric("ferry_relay_streams_total") == 2)
    a.close()
    b.close()


def test_a_bind_captured_on_udp_and_replayed_over_a_stream_moves_nothing(relay):
    """Binds cross networks in the clear. One captured with its cookie, replayed by an attacker
    over its own stream, is challenged for that stream: the victim's end stays where it was and
    the partner's packets keep reaching the victim, not the replayer."""
    from wgrelay import BindResult, bind_request
    ka, kb = os.urandom(32), os.urandom(32)
    a, b = UDPPort(), UDPPort()
    ca = credential(SECRET, ka, "acme")
    a.send(bind_request(ca, kb), relay.addr)
    cookie = BindResult(a.recv()[0]).cookie
    captured = bind_request(ca, kb, cookie)
    a.send(captured, relay.addr)
    assert BindResult(a.recv()[0]).success
    assert bind(b, relay.addr, credential(SECRET, kb, "acme"), ka).state == 1
    attacker = relay.stream()
    attacker.send(captured)
    answer = BindResult(attacker.recv()[0])
    assert answer.code == 401 and not answer.success, "challenged again, for the attacker's own stream"
    wait_until(lambda: relay.f.metric("ferry_relay_binds_total", {"result": "wrong_source"}) == 1)
    ini = initiation(5, ka)
    b.send(ini, relay.addr)
    assert a.recv()[0] == ini, "the victim still receives its partner's packets"
    with pytest.raises(socket.timeout):
        attacker.frame(0.5)
    for p in (a, b, attacker):
        p.close()


def test_turn_on_the_same_listener_is_unchanged(relay):
    """Only a stream whose first message is a FERRY-BIND is the relay's: an Allocate is TURN's."""
    s = relay.stream(tls=False)
    s.send(message(0x003, 0, [(0x0019, bytes([17, 0, 0, 0]))], fingerprint=False))
    answer, _ = s.recv()
    assert struct.unpack(">H", answer[:2])[0] == 0x0113, "TURN's 401 to an unauthenticated Allocate"
    assert relay.f.metric("ferry_relay_streams_total") == 0
    s.close()


def test_a_streams_bad_binds_and_unbound_packets_are_refused_and_counted(relay):
    f = relay.f
    ka, kb = os.urandom(32), os.urandom(32)
    s = relay.stream()
    bad = (credential(SECRET, ka, "acme")[0], os.urandom(32))  # the token, and a key that did not mint it
    assert bind(s, None, bad, kb).code == 403
    # The connection stays: the peer may bind again, here with a real credential.
    assert bind(s, None, credential(SECRET, ka, "acme"), kb).state == 0
    # Packets with no session behind them, and a stream nobody bound at all.
    s.send_wg(initiation(1, kb))
    other = relay.stream()
    other.send(message(0x070, 0, [], fingerprint=False))  # a FERRY-BIND with nothing in it
    other.send_wg(initiation(7, ka))
    wait_until(lambda: f.metric("ferry_relay_binds_total", {"result": "bad_credential"}) == 1
               and f.metric("ferry_relay_binds_total", {"result": "malformed"}) == 1
               and f.metric("ferry_relay_drops_total", {"reason": "partner_unbound"}) == 1
               and f.metric("ferry_relay_drops_total", {"reason": "unbound_source"}) == 1,
               what=lambda: [f.metric("ferry_relay_binds_total", {"result": r}) for r in ("bad_credential", "malformed")]
               + [f.metric("ferry_relay_drops_total", {"reason": r}) for r in ("partner_unbound", "unbound_source")])
    # A frame on another channel cannot be the relay's: the connection closes, counted.
    other.sock.sendall(struct.pack(">HH", 0x4001, 4) + b"abcd")
    with pytest.raises((ConnectionError, socket.timeout, OSError)):
        other.frame(2.0)
    wait_until(lambda: f.metric("ferry_relay_drops_total", {"reason": "malformed"}) == 1)
    s.close()


def test_a_pipelined_flood_from_streams_is_bounded_and_every_packet_counted(ferryd_factory):
    """Two streams pipelining 20,000 packets each with no session: each is dropped and counted
    once (unbound at the relay, or over relay.stream_handoff_bytes before it), none lost
    silently, and the server answers a bind afterwards."""
    relay = Relay(ferryd_factory, extra="[relay]\nstream_handoff_bytes = 65536\n")
    f, n = relay.f, 20000
    streams = [relay.stream(tls=False), relay.stream()]
    ka = os.urandom(32)
    for s in streams:
        assert bind(s, None, credential(SECRET, os.urandom(32), "acme"), ka).state == 0
    frame = struct.pack(">HH", 0x4000, 48) + data(9, b"y" * 16)
    for s in streams:
        s.sock.sendall(frame * n)

    def counted():
        return f.metric("ferry_relay_drops_total", {"reason": "unknown_index"}) \
            + f.metric("ferry_relay_drops_total", {"reason": "handoff_full"})
    wait_until(lambda: counted() == 2 * n, timeout=20)
    assert f.metric("ferry_relay_drops_total", {"reason": "handoff_full"}) > 0, "the hand-off bound was reached"
    late = relay.stream()
    assert bind(late, None, credential(SECRET, os.urandom(32), "acme"), ka).success
    for s in streams + [late]:
        s.close()


needs_lab = pytest.mark.skipif(not (shutil.which("wireguard-go") and shutil.which("wg") and shutil.which("nft")),
                               reason="needs root, wireguard-go, wireguard-tools and nftables (scripts/setup.sh test)")


@needs_lab
def test_stock_wireguard_with_udp_blocked_on_one_side_through_the_stream_side(ferryd_factory, tmpdir_path):
    """(c) of issue 21: peer B's network lets only TCP 443 out. B's end is bound over TLS on 443
    and a carrier (wgrelay.py carry, standing in for the agent's stream path) moves B's WireGuard
    packets between the stream and B's WireGuard; A's stock WireGuard talks to the relay's UDP
    port from its own port, with nothing of ours in its path."""
    from lab import ADMIN_IP, FERRY_IP, Lab, WireGuard
    from netns import available
    if not available():
        pytest.skip("ip netns needs root")
    lab = Lab(nat_a="symmetric", nat_b="symmetric", block_b=True)
    wgs, carrier = [], None
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        config = f'[admin]\naddress = "{ADMIN_IP}:9100"\n[server]\nworkers = 2\ndrain_seconds = 0\n[turn]\nrealm = "lab"\n' \
                 f'relay_ipv4 = "{FERRY_IP}"\nstatic_auth_secrets = ["{SECRET}"]\n[tls]\nself_signed = true\n' \
                 + listener("relay-udp", 3479, service="relay", host=FERRY_IP) \
                 + listener("turn-tls", 443, "tls", service="turn", host=FERRY_IP)
        f = ferryd_factory(config, prefix=lab.ferry.prefix(), admin_host=ADMIN_IP, admin_port=9100)
        tag = str(os.getpid() % 10000)
        a = WireGuard(lab.peer_a, f"wsa{tag}", "10.99.0.1", tmpdir_path)
        b = WireGuard(lab.peer_b, f"wsb{tag}", "10.99.0.2", tmpdir_path)
        wgs = [a, b]
        # B cannot bind over UDP: its network drops it.
        r = lab.peer_b.exec("python3", os.path.join(here, "wgrelay.py"), "bind", f"{FERRY_IP}:3479", "--secret", SECRET,
                            "--network", "lab", "--key", b.public, "--partner", a.public, check=False)
        assert r.returncode != 0, r.stdout
        r = lab.peer_a.exec("python3", os.path.join(here, "wgrelay.py"), "bind", f"{FERRY_IP}:3479", "--secret", SECRET,
                            "--network", "lab", "--key", a.public, "--partner", b.public, "--raw-port", "51820")
        assert "success=True" in r.stdout, r.stdout + r.stderr
        carrier = subprocess.Popen(lab.peer_b.prefix() + [
            "python3", os.path.join(here, "wgrelay.py"), "carry", f"{FERRY_IP}:443", "--secret", SECRET, "--network", "lab",
            "--key", b.public, "--partner", a.public, "--listen", "127.0.0.1:51999", "--deliver", "127.0.0.1:51820"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = carrier.stdout.readline()
        assert "success=True" in line and "state=1" in line, line
        lab.peer_a.exec("wg", "set", a.name, "peer", b.public, "allowed-ips", f"{b.address}/32",
                        "endpoint", f"{FERRY_IP}:3479", "persistent-keepalive", "5")
        lab.peer_b.exec("wg", "set", b.name, "peer", a.public, "allowed-ips", f"{a.address}/32",
                        "endpoint", "127.0.0.1:51999", "persistent-keepalive", "5")
        r = lab.peer_b.exec("ping", "-c", "5", "-i", "0.2", "-W", "5", a.address, check=False)
        if r.returncode != 0:
            from conftest import http_get
            metrics = "\n".join(l for l in http_get(9100, "/metrics", host=ADMIN_IP)[1].splitlines() if l.startswith("ferry_relay"))
            shows = lab.peer_a.exec("wg", "show", a.name).stdout + lab.peer_b.exec("wg", "show", b.name).stdout
            carrier.kill()
            raise AssertionError(r.stdout + metrics + "\n" + shows + "\ncarrier: " + carrier.stdout.read())
        r = lab.peer_a.exec("ping", "-c", "20", "-i", "0.05", "-s", "1300", b.address, check=False)
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout
        assert f.metric("ferry_relay_streams_total") == 1 and f.metric("ferry_relay_sessions_active") == 1
        assert f.metric("ferry_relay_packets_total") >= 50
    finally:
        if carrier:
            carrier.kill()
            carrier.wait()
        for w in wgs:
            w.close()
        lab.close()


def test_probe_checks_the_stream_side(relay):
    from conftest import binary
    url = f"wgrelays:127.0.0.1:{relay.tls}"
    ok = subprocess.run([binary("ferry"), "probe", "--json", "--insecure", "--secret", SECRET, url], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    steps = {s["name"]: s for s in json.loads(ok.stdout)["targets"][0]["steps"]}
    assert steps["relay bind"]["ok"] and steps["relay echo"]["ok"] and "stun binding" not in steps, steps
    wait_until(lambda: relay.f.metric("ferry_relay_packets_total") == 1 and relay.f.metric("ferry_relay_streams_total") == 2
               and relay.f.metric("ferry_relay_binds_total", {"result": "unbound"}) == 2)
    bad = subprocess.run([binary("ferry"), "probe", "--insecure", "--secret", "not-the-relay-secret-0123", url], capture_output=True, text=True)
    assert bad.returncode == 1 and "403" in bad.stdout, bad.stdout
