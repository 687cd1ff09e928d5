"""STUN and TURN over UDP against the real ferryd, with coturn's turnutils_* tools, aioice, and a
small raw client for the error paths."""
import asyncio
import os
import re
import signal
import socket
import struct
import subprocess
import time

import pytest

import turnclient as tc
from conftest import UNDER_ASAN, Ferryd, free_port

SECRET = "0123456789abcdef0123"


def turn_config(port, allow_loopback=True, extra_turn="", extra="", drain=0):
    allow = 'allow = ["127.0.0.0/8", "::1/128"]' if allow_loopback else ""
    return f"""
[server]
workers = 2
# Tests stop servers with live allocations: no drain then (the drain is tested in test_lifecycle,
# and by the tests that ask for one).
drain_seconds = {drain}
[turn]
realm = "ferry.test"
relay_ipv4 = "127.0.0.1"
relay_ipv6 = "::1"
static_auth_secrets = ["{SECRET}"]
{extra_turn}
[[turn.user]]
name = "test"
password = "pass"
[policy]
{allow}
[[listener]]
name = "turn-udp"
address = "127.0.0.1:{port}"
service = "turn"
{extra}
"""


@pytest.fixture
def turn_server(ferryd_factory):
    def start(allow_loopback=True, extra_turn="", extra="", drain=0):
        port = free_port(socket.SOCK_DGRAM)
        f = ferryd_factory(turn_config(port, allow_loopback, extra_turn, extra, drain))
        f.port = port
        return f
    return start


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def run_uclient(args, timeout=90):
    r = subprocess.run(["turnutils_uclient", *args], capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    m = re.search(r"Total lost packets (\d+) \(([\d.]+)%\)", out)
    assert m, out[-3000:]
    return int(m.group(1)), out


@pytest.fixture
def peer():
    port = free_port(socket.SOCK_DGRAM)
    p = subprocess.Popen(["turnutils_peer", "-p", str(port), "-L", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    yield port
    p.kill()
    p.wait()


def test_stun_binding_with_turnutils_stunclient(turn_server):
    f = turn_server()
    r = subprocess.run(["turnutils_stunclient", "-p", str(f.port), "127.0.0.1"], capture_output=True, text=True, timeout=30)
    assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", r.stdout + r.stderr), r.stdout + r.stderr
    assert f.metric("ferry_stun_requests_total", {"method": "binding", "result": "ok"}) >= 1


def test_uclient_relays_over_channels_without_loss(turn_server, peer):
    f = turn_server()
    lost, out = run_uclient(["-p", str(f.port), "-u", "test", "-w", "pass", "-e", "127.0.0.1", "-r", str(peer),
                             "-n", "300", "-m", "4", "-l", "1200", "-z", "5", "127.0.0.1"])
    assert lost == 0, out[-2000:]
    assert f.metric("ferry_turn_channels_bound_total") >= 4
    assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_peer"}) >= 4 * 300
    assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_client"}) >= 4 * 300


def test_uclient_relays_with_send_and_data_indications(turn_server, peer):
    f = turn_server()
    lost, out = run_uclient(["-s", "-p", str(f.port), "-u", "test", "-w", "pass", "-e", "127.0.0.1", "-r", str(peer),
                             "-n", "300", "-m", "4", "-l", "1200", "-z", "5", "127.0.0.1"])
    assert lost == 0, out[-2000:]
    assert f.metric("ferry_turn_channels_bound_total") == 0
    assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_client"}) >= 4 * 300


def test_uclient_with_turn_rest_shared_secret(turn_server, peer):
    f = turn_server()
    lost, out = run_uclient(["-W", SECRET, "-p", str(f.port), "-e", "127.0.0.1", "-r", str(peer),
                             "-n", "100", "-m", "2", "-l", "1000", "127.0.0.1"])
    assert lost == 0, out[-2000:]
    assert f.metric("ferry_turn_allocations_created_total") >= 2


def test_aioice_allocates_and_exchanges_data(turn_server):
    from aioice import turn as aioice_turn
    f = turn_server()

    async def scenario():
        loop = asyncio.get_running_loop()
        got_at_peer = loop.create_future()
        got_back = loop.create_future()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                if not got_at_peer.done():
                    got_at_peer.set_result(addr)
                self.transport.sendto(b"echo:" + data, addr)

        peer_transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        peer_addr = peer_transport.get_extra_info("sockname")

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if not got_back.done():
                    got_back.set_result((data, addr))

        transport, _ = await aioice_turn.create_turn_endpoint(Client, server_addr=("127.0.0.1", f.port),
                                                               username="test", password="pass")
        relayed = transport.get_extra_info("sockname")
        transport.sendto(b"hello", peer_addr)
        seen_from = await asyncio.wait_for(got_at_peer, 5)
        data, addr = await asyncio.wait_for(got_back, 5)
        transport.close()
        peer_transport.close()
        return relayed, seen_from, data, addr, peer_addr

    relayed, seen_from, data, addr, peer_addr = asyncio.run(scenario())
    assert seen_from == tuple(relayed), "the peer sees the relayed transport address"
    assert data == b"echo:hello"
    assert addr == peer_addr


def test_every_denied_peer_encoding_gets_403(turn_server):
    f = turn_server(allow_loopback=False)
    c = tc.TurnClient(("127.0.0.1", f.port), "test", "pass")
    dual = ipv6_loopback()
    extra = [(tc.ADDITIONAL_ADDRESS_FAMILY, struct.pack("!I", 2 << 24))] if dual else []
    r = c.allocate(extra)
    assert r.ok, r.code
    # 127.0.0.1 and ::1 are this relay's own addresses (turn_config): see test_own_relay.py.
    denied = ["127.8.9.10", "0.0.0.0", "10.1.2.3", "172.16.0.1", "192.168.0.1", "100.64.0.1",
              "100.100.100.200", "169.254.169.254", "224.0.0.251", "239.255.255.250", "255.255.255.255"]
    if dual:
        denied += ["::", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1",
                   "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::6464:64c8", "2002:7f00:1::1", "2002:a9fe:a9fe::1",
                   "2001:0:4136:e378:8000:63bf:80ff:fffe", "fe80::1", "fec0::1", "fc00::1", "fd00:ec2::254", "ff02::1"]
    for ip in denied:
        r = c.create_permission(ip)
        assert r.code == 403, (ip, r.code)
        r = c.channel_bind(0x4001, ip, 5000)
        assert r.code == 403, (ip, r.code)
    assert f.metric("ferry_turn_drops_total", {"reason": "denied_peer"}) == 2 * len(denied)
    # A public address is fine (a permission is only state; nothing is sent).
    assert c.create_permission("8.8.8.8").ok
    assert f.metric("ferry_stun_requests_total", {"method": "create_permission", "result": "403"}) == len(denied)
    # The relay's own address is a peer on the relay port range only: port 5000 is not in it.
    assert c.create_permission("127.0.0.1").ok
    assert c.channel_bind(0x4001, "127.0.0.1", 5000).code == 403
    c.close()


def test_wrong_password_gives_401_and_creates_nothing(turn_server):
    f = turn_server()
    c = tc.TurnClient(("127.0.0.1", f.port), "test", "wrong")
    assert c.allocate().code == 401
    c.username, c.password = "nobody", "pass"
    assert c.allocate().code == 401
    assert f.metric("ferry_turn_allocations_created_total") == 0
    assert f.metric("ferry_turn_auth_failures_total", {"reason": "bad_integrity"}) == 1
    assert f.metric("ferry_turn_auth_failures_total", {"reason": "unknown_user"}) == 1
    assert "pass" not in f.output() and "wrong" not in f.output(), "credentials never reach the log"


def test_stale_nonce_gives_438_and_retry_succeeds(turn_server):
    f = turn_server(extra_turn="nonce_lifetime = 5")
    c = tc.TurnClient(("127.0.0.1", f.port), "test", "pass")
    assert c.allocate().ok
    time.sleep(6)
    r = c.request(tc.REFRESH, retry_stale=False)
    assert r.code == 438
    fresh = r.attrs[tc.NONCE][0].decode()
    assert fresh != c.nonce
    c.nonce = fresh
    assert c.refresh().ok
    assert f.metric("ferry_turn_auth_failures_total", {"reason": "stale_nonce"}) == 1


def test_nonces_survive_a_restart_with_the_state_directory(tmpdir_path):
    state = os.path.join(tmpdir_path, "state")
    os.mkdir(state)
    port = free_port(socket.SOCK_DGRAM)
    config = turn_config(port).replace("[server]", f'[server]\nstate_directory = "{state}"')
    f = Ferryd(config, tmpdir_path)
    c = tc.TurnClient(("127.0.0.1", port), "test", "pass")
    c.challenge()
    assert f.stop() == 0
    assert os.stat(os.path.join(state, "nonce.key")).st_mode & 0o077 == 0
    f = Ferryd(config, tmpdir_path)
    r = c.request(tc.ALLOCATE, [(tc.REQUESTED_TRANSPORT, struct.pack("!I", 17 << 24))], retry_stale=False)
    assert r.ok, "a nonce from before the restart is still valid"
    f.stop()


def rest_credentials(expiry, name="peer"):
    return tc.rest_credentials(SECRET, name, expiry)


def test_expired_shared_secret_credential_is_refused(turn_server):
    f = turn_server()
    c = tc.TurnClient(("127.0.0.1", f.port), *rest_credentials(int(time.time()) - 5))
    assert c.allocate().code == 401
    assert f.metric("ferry_turn_auth_failures_total", {"reason": "expired"}) == 1
    ok = tc.TurnClient(("127.0.0.1", f.port), *rest_credentials(int(time.time()) + 600))
    r = ok.allocate()
    assert r.ok
    assert r.addresses(tc.XOR_MAPPED_ADDRESS)[0] == ok.sock.getsockname()
    assert f.metric("ferry_turn_allocations_created_total") == 1


def test_quota_per_user_and_refresh_to_zero(turn_server):
    f = turn_server(extra_turn="max_allocations_per_user = 2")
    clients = [tc.TurnClient(("127.0.0.1", f.port), "test", "pass") for _ in range(3)]
    assert clients[0].allocate().ok and clients[1].allocate().ok
    assert clients[2].allocate().code == 486
    assert f.metric("ferry_turn_allocations_active") == 2
    r = clients[0].refresh(0)
    assert r.ok
    assert f.metric("ferry_turn_allocations_active") == 1
    assert clients[2].allocate().ok, "the user's slot came back"
    assert clients[1].allocate().code == 437, "one allocation per five-tuple"


def test_malformed_flood_is_dropped_counted_and_harmless(turn_server):
    f = turn_server()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rng = __import__("random").Random(7)
    cookie = struct.pack("!I", tc.COOKIE)
    kinds = [
        lambda: os.urandom(rng.randint(0, 600)),                                       # noise
        lambda: b"\x00\x01\x00\x08" + cookie + os.urandom(12),                          # header says 8, nothing follows
        lambda: b"\x00\x01\x00\x04" + cookie + os.urandom(12) + b"\x00\x06\x00\xff",    # attribute overruns
        lambda: b"\x40\x00\x05\x00" + b"x" * 8,                                        # ChannelData longer than datagram
        lambda: b"\x00\x01\x00\x08" + cookie + os.urandom(12) + b"\x80\x28\x00\x04abcd",  # bad FINGERPRINT
        lambda: b"\x41",                                                              # 1 byte
    ]
    sent = 0
    for i in range(20000):
        s.sendto(kinds[i % len(kinds)](), ("127.0.0.1", f.port))
        sent += 1
        if i % 500 == 0:
            time.sleep(0.005)
    time.sleep(0.5)
    c = tc.TurnClient(("127.0.0.1", f.port))
    assert c.binding().ok, "still serving"
    malformed = f.metric("ferry_turn_drops_total", {"reason": "malformed"})
    assert malformed > 0.5 * sent, malformed
    assert f.proc.poll() is None
    rss_kib = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{f.proc.pid}/status").read()).group(1))
    if not UNDER_ASAN:
        assert rss_kib < 200 * 1024, rss_kib


def test_drain_waits_for_allocations_then_exits(turn_server):
    from conftest import http_get
    f = turn_server(drain=30)
    c = tc.TurnClient(("127.0.0.1", f.port), "test", "pass")
    assert c.allocate().ok
    f.signal(signal.SIGTERM)
    time.sleep(1)
    assert f.proc.poll() is None, "an allocation is still alive: the drain waits"
    assert http_get(f.admin_port, "/readyz")[0] == 503
    assert c.refresh().ok, "sessions keep working while draining"
    started = time.time()
    assert c.refresh(0).ok
    assert f.proc.wait(10) == 0
    assert time.time() - started < 2, "the last allocation gone, the drain ends"


def test_channel_data_then_deletion_in_one_batch(turn_server):
    """ChannelData queued for a relay, then a Refresh that deletes the allocation, in the same
    receive batch: the queued datagrams leave before the relayed socket closes (this once sent
    on a closed descriptor)."""
    f = turn_server()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.5)
    for round_ in range(20):
        c = tc.TurnClient(("127.0.0.1", f.port), "test", "pass")
        assert c.allocate().ok
        assert c.channel_bind(0x4000, *sink.getsockname()).ok
        tid = os.urandom(12)
        full = [(tc.LIFETIME, struct.pack("!I", 0)), (tc.USERNAME, b"test"), (tc.REALM, c.realm.encode()), (tc.NONCE, c.nonce.encode())]
        refresh, _ = tc.encode(tc.REFRESH, 0, full, tid=tid, key=c.key())
        burst = [b"\x40\x00\x00\x04data"] * 30 + [refresh] + [b"\x40\x00\x00\x04late"] * 5
        for d in burst:
            c.sock.sendto(d, ("127.0.0.1", f.port))
        got = 0
        try:
            while True:
                data = sink.recv(100)
                got += data == b"data"
        except socket.timeout:
            pass
        assert got == 30, (round_, got)
        c.close()
    assert f.proc.poll() is None
    assert f.metric("ferry_turn_allocations_active") == 0
    assert f.metric("ferry_turn_drops_total", {"reason": "no_allocation"}) >= 20 * 5 - 5
