"""Signaling across ferryd instances over real nats-server clusters (docs/deployment.md): peers on
different instances route, see presence, replace each other and stay isolated by network; NATS
nodes, all of NATS, and whole ferryds fail and come back. nats-py reads the subjects directly."""
import asyncio
import base64
import json
import os
import re
import signal as sig
import socket
import time

import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from conftest import Ferryd, LoopbackAgents, free_port, http_get, loopback_signal_config, nats_env, wait_until
from natscluster import NatsCluster
from test_signal import Issuer, b64, connect, ice_agent, run, signal_config, token


@pytest.fixture
def cluster(tmpdir_path):
    made = []

    def make(**kw):
        c = NatsCluster(os.path.join(tmpdir_path, f"nats{len(made)}"), **kw)
        made.append(c)
        return c
    yield make
    for c in made:
        c.stop()


@pytest.fixture
def instances(tmpdir_path):
    """ferryd instances with signaling over NATS, each in its own directory."""
    started = []
    issuer = Issuer(tmpdir_path)

    def start(servers, name, extra=""):
        d = os.path.join(tmpdir_path, name)
        os.makedirs(d, exist_ok=True)
        tls_port, tcp_port = free_port(), free_port()
        urls = ", ".join(f'"{u}"' for u in servers)
        text = signal_config(tls_port, tcp_port, issuer.path, extra=f"""
[signal.nats]
servers = [{urls}]
instance = "{name}"
reconnect_wait_ms = 100
{extra}
""")
        f = Ferryd(text, d, env=nats_env())
        f.url = f"wss://127.0.0.1:{tls_port}/v1/signal"
        f.name = name
        started.append(f)
        wait_until(lambda: f.metric("ferry_signal_nats_connected") == 1, timeout=10, what=lambda: f.output())
        return f
    yield start
    for f in started:
        f.stop()


def peers_see_each_other(*fs):
    """Every instance hears the others' heartbeats (so their subscriptions are in place)."""
    for f in fs:
        wait_until(lambda: f.metric("ferry_signal_nats_instances") >= len(fs) - 1, timeout=10)


def loopback_instances(c, tmpdir_path, secret, names=("one", "two"), extra=""):
    """ferryds for `ferry tunnel` and `ferry bench` (plain ws:// signaling and TURN on one port
    each, loopback peers allowed) on NATS cluster `c`: their ports and processes."""
    ports, fs = [free_port() for _ in names], []
    for port, name in zip(ports, names):
        d = os.path.join(tmpdir_path, name)
        os.makedirs(d)
        text = loopback_signal_config(port, secret, "loopback-rest-secret-0123456789") + f"""
[signal.nats]
servers = ["{c.urls[0]}"]
instance = "{name}"
"""
        fs.append(Ferryd(text.replace("token_secrets", extra + "token_secrets"), d, env=nats_env()))
    peers_see_each_other(*fs)
    return ports, fs


def on_cluster(cluster, instances, nodes=1, seeds=(0, 1), names=("one", "two"), extra=""):
    """A NATS cluster of `nodes` (formed), and one ferryd per name, each given the seed node at
    the same place in `seeds`, hearing each other: the cluster and the ferryds."""
    c = cluster(nodes=nodes, extra=extra).start()
    if nodes > 1:
        c.wait_formed()
    fs = [instances([c.urls[seed % nodes]], name) for seed, name in zip(seeds, names)]
    peers_see_each_other(*fs)
    return (c, *fs)


async def sees(watcher, peer):
    """`watcher` subscribes to `peer` and waits for it online: after that, NATS routes to it from
    the watcher's node (its interest travels ahead of its presence; docs/deployment.md)."""
    await watcher.send(type="subscribe", peers=[peer.key])
    await expect(watcher, type="peer_online", peer=peer.key)


async def expect(who, **fields):
    """The next message that is not a ping-like extra; it must carry `fields`."""
    m = await who.recv()
    for k, v in fields.items():
        assert m.get(k) == v, m
    return m


def test_route_presence_and_offline_across_instances_on_a_three_node_cluster(cluster, instances):
    c, f1, f2 = on_cluster(cluster, instances, nodes=3)

    async def go():
        a, b = await connect(f1.url), await connect(f2.url)
        # Presence across instances: subscribing asks who holds the key.
        await a.send(type="subscribe", peers=[b.key])
        await expect(a, type="peer_online", peer=b.key)
        await b.send(type="subscribe", peers=[a.key])
        await expect(b, type="peer_online", peer=a.key)
        # Offer and answer, each from one instance to the other, with the sender stamped.
        await a.send(type="offer", to=b.key, payload="sdp-a", id=7)
        m = await expect(b, type="offer", payload="sdp-a")
        assert m["from"] == a.key
        await b.send(type="answer", to=a.key, payload="sdp-b")
        assert (await expect(a, type="answer"))["from"] == b.key
        # A key connected nowhere: NATS's no-responders answers, as peer_offline with the ref.
        nobody = b64(X25519PrivateKey.generate().public_key().public_bytes_raw())
        await a.send(type="offer", to=nobody, payload="x", id=9)
        m = await expect(a, type="error", code="peer_offline")
        assert m["ref"] == 9
        # 80 messages one way (within the burst): every one arrives, in order.
        for i in range(80):
            await a.send(type="candidate", to=b.key, payload=str(i))
        got = [int((await b.recv())["payload"]) for _ in range(80)]
        assert got == list(range(80))
        # B leaves: A (on the other instance) sees it go, then come back on A's own instance.
        await b.ws.close()
        await expect(a, type="peer_offline", peer=b.key)
        b2 = await connect(f1.url, priv=b.priv)
        await expect(a, type="peer_online", peer=b.key)
        await b2.ws.close()
        await a.ws.close()
    run(go())
    assert f1.metric("ferry_signal_messages_forwarded_total") >= 82
    assert f2.metric("ferry_signal_nats_delivered_total") >= 81
    assert f1.metric("ferry_signal_nats_offline_total") == 1
    assert f1.metric("ferry_signal_messages_dropped_total", {"reason": "peer_offline"}) == 1


def test_aioice_agents_on_different_instances_connect_through_the_relay(cluster, instances):
    c, f1, f2 = on_cluster(cluster, instances, nodes=3, seeds=(0, 2))

    async def go():
        a, b = await connect(f1.url), await connect(f2.url)
        await sees(a, b)
        await sees(b, a)
        results = {}
        await asyncio.gather(ice_agent(a, b.key, True, results), ice_agent(b, a.key, False, results))
        return results
    results = run(go())
    assert results["pong"] == b"pong over ferry"


def test_newer_connection_at_another_instance_replaces_the_older(cluster, instances):
    c, f1, f2, f3 = on_cluster(cluster, instances, nodes=3, seeds=(0, 1, 2), names=("one", "two", "three"))

    async def go():
        priv = X25519PrivateKey.generate()
        watcher = await connect(f3.url)
        old = await connect(f1.url, priv=priv)
        await watcher.send(type="subscribe", peers=[old.key])
        await expect(watcher, type="peer_online", peer=old.key)
        new = await connect(f2.url, priv=priv)
        assert new.welcome["type"] == "welcome"
        await expect(old, type="error", code="replaced")
        with pytest.raises(websockets.ConnectionClosed) as e:
            await old.recv()
        assert e.value.rcvd.code == 4000
        # The watcher hears the key online at its new instance, and never offline; messages
        # reach the newer connection.
        await expect(watcher, type="peer_online", peer=new.key)
        await watcher.send(type="offer", to=new.key, payload="to the new one")
        assert (await expect(new, type="offer"))["payload"] == "to the new one"
        with pytest.raises(asyncio.TimeoutError):
            m = await watcher.recv(timeout=1.5)
            raise AssertionError(f"the watcher heard more: {m}")
    run(go())
    assert f1.metric("ferry_signal_nats_replaced_total") == 1


def test_networks_stay_isolated_across_instances_and_in_subjects(cluster, instances):
    c, f1, f2 = on_cluster(cluster, instances)
    crafted = "a.>.* b"

    async def go():
        # A crafted network name with NATS wildcards and separators.
        other = await connect(f2.url, make_token=lambda pub: token(pub, network=crafted))
        assert other.welcome["network"] == crafted
        a = await connect(f1.url)
        await a.send(type="subscribe", peers=[other.key])
        await a.send(type="offer", to=other.key, payload="cross-network", id=1)
        m = await expect(a, type="error", code="peer_offline")
        assert m["ref"] == 1
        with pytest.raises(asyncio.TimeoutError):
            await other.recv(timeout=1)
        # A peer of the crafted network on the other instance reaches its own kind.
        same = await connect(f1.url, make_token=lambda pub: token(pub, network=crafted))
        await sees(same, other)
        await same.send(type="offer", to=other.key, payload="same network")
        assert (await expect(other, type="offer"))["payload"] == "same network"
        # What NATS holds: every name from a peer became hex; no subject a ferryd took carries a
        # wildcard but its own per-network presence and reply subjects.
        subjects = [s for conn in c.varz(0, "connz?subs=1")["connections"] for s in conn.get("subscriptions_list", [])]
        token_re = re.compile(r"^ferry\.(hb\.\*|r\.(one|two)\.>|[nh][0-9a-f]+\.(q|p\.[0-9a-f]{64}|o\.\*))$")
        assert subjects and all(token_re.match(s) for s in subjects), subjects
        assert "ferry.n" + crafted.encode().hex() + ".p." + base64.b64decode(other.key).hex() in subjects
    run(go())


@pytest.mark.parametrize("death", ["killed", "frozen"])
def test_a_nats_node_dies_and_routing_moves_to_another_node(cluster, instances, death):
    """Killed: the kernel closes its sockets and the client notices at once. Frozen (SIGSTOP):
    as a dead host or a partition, nothing arrives and only the client's pings tell."""
    # Each ferryd knows one seed node; it learns the others from the cluster.
    c, f1, f2 = on_cluster(cluster, instances, nodes=3)

    async def go():
        a, b = await connect(f1.url), await connect(f2.url)
        await sees(a, b)
        await a.send(type="offer", to=b.key, payload="before")
        await expect(b, type="offer", payload="before")
        if death == "killed":
            c.kill(0)
        else:
            os.killpg(c.procs[0].pid, sig.SIGSTOP)
        started = time.monotonic()
        # Routing comes back once f1 has moved to another node: probe until it does.
        delivered = None
        for i in range(100):
            await a.send(type="candidate", to=b.key, payload=f"probe-{i}")
            try:
                while True:
                    m = await b.recv(timeout=0.05)
                    if m.get("type") == "candidate":
                        delivered = time.monotonic() - started
                        break
            except asyncio.TimeoutError:
                pass
            if delivered is not None:
                break
            # Drain what f1 said meanwhile (unavailable, while it had no node).
            try:
                while True:
                    await a.recv(timeout=0.01)
            except asyncio.TimeoutError:
                pass
        assert delivered is not None and delivered < 2.5, delivered
        return delivered
    try:
        took = run(go())
    finally:
        if death == "frozen":
            os.killpg(c.procs[0].pid, sig.SIGCONT)
    assert f1.metric("ferry_signal_nats_connection_events_total", {"event": "reconnected"}) >= 1
    print(f"routing back {took:.2f} s after the node was {death}")


def test_all_of_nats_down_local_routing_goes_on_and_remote_gets_a_clear_error(cluster, instances):
    c, f1, f2 = on_cluster(cluster, instances)

    async def go():
        a, local, b = await connect(f1.url), await connect(f1.url), await connect(f2.url)
        await a.send(type="subscribe", peers=[b.key])
        await expect(a, type="peer_online", peer=b.key)
        c.kill(0)
        wait_until(lambda: f1.metric("ferry_signal_nats_connected") == 0, timeout=5)
        status, body = http_get(f1.admin_port, "/readyz")
        assert status == 200 and "degraded" in body and "NATS" in body
        # The status page (cached for 250 ms) and its JSON say so too.
        wait_until(lambda: "NATS unreachable" in http_get(f1.admin_port, "/")[1], timeout=2)
        assert json.loads(http_get(f1.admin_port, "/v1/status")[1])["signaling"]["nats"]["connected"] is False
        # Local peers go on.
        await a.send(type="offer", to=local.key, payload="local")
        assert (await expect(local, type="offer"))["payload"] == "local"
        # A peer at the other instance: a clear error, counted.
        await a.send(type="offer", to=b.key, payload="remote", id=3)
        m = await expect(a, type="error", code="unavailable")
        assert "NATS" in m["message"]
        # Heartbeats stop: the remote peer is offline as far as this instance can tell.
        await expect(a, type="peer_offline", peer=b.key)
        assert f1.metric("ferry_signal_nats_dropped_total", {"reason": "unavailable"}) >= 1
        c.start(0)
        wait_until(lambda: f1.metric("ferry_signal_nats_connected") == 1 and f2.metric("ferry_signal_nats_connected") == 1, timeout=10)
        # Back without reconnecting: presence learned again, messages flow both ways.
        await expect(a, type="peer_online", peer=b.key)
        await a.send(type="offer", to=b.key, payload="after")
        assert (await expect(b, type="offer"))["payload"] == "after"
        await b.send(type="answer", to=a.key, payload="back")
        assert (await expect(a, type="answer"))["payload"] == "back"
        status, body = http_get(f1.admin_port, "/readyz")
        assert status == 200 and body == "ready\n"
        wait_until(lambda: json.loads(http_get(f1.admin_port, "/v1/status")[1])["signaling"]["nats"]["instances_seen"] == 1, timeout=3)
        nats = json.loads(http_get(f1.admin_port, "/v1/status")[1])["signaling"]["nats"]
        assert nats["connected"] and nats["instance"] == "one" and nats["server"] is None, "no URL without the admin token"
    run(go())


def test_a_ferryd_dies_its_peers_fail_over_and_partners_see_offline_then_online(cluster, instances):
    c, f1, f2 = on_cluster(cluster, instances)

    async def go():
        a, b = await connect(f1.url), await connect(f2.url)
        await a.send(type="subscribe", peers=[b.key])
        await expect(a, type="peer_online", peer=b.key)
        os.killpg(f2.proc.pid, sig.SIGKILL)
        f2.proc.wait()
        started = time.monotonic()
        await expect(a, type="peer_offline", peer=b.key)
        assert time.monotonic() - started < 5
        b2 = await connect(f1.url, priv=b.priv)
        await expect(a, type="peer_online", peer=b.key)
        await a.send(type="offer", to=b2.key, payload="found you")
        assert (await expect(b2, type="offer"))["payload"] == "found you"
    run(go())
    assert f1.metric("ferry_signal_nats_instance_lost_total") >= 1


def test_two_regions_joined_by_a_gateway(cluster, instances):
    east, west = cluster(name="EAST", nodes=1, gateway=True), cluster(name="WEST", nodes=1, gateway=True)
    east.join(west)
    east.start()
    west.start()
    east.wait_formed(gateways=1)
    west.wait_formed(gateways=1)
    f1, f2 = instances(east.urls, "east"), instances(west.urls, "west")
    peers_see_each_other(f1, f2)

    async def go():
        a, b = await connect(f1.url), await connect(f2.url)
        await a.send(type="subscribe", peers=[b.key])
        await expect(a, type="peer_online", peer=b.key)
        await a.send(type="offer", to=b.key, payload="across regions")
        assert (await expect(b, type="offer"))["from"] == a.key
        nobody = b64(X25519PrivateKey.generate().public_key().public_bytes_raw())
        await b.send(type="offer", to=nobody, payload="x", id=4)
        assert (await expect(b, type="error", code="peer_offline"))["ref"] == 4
        # Both regions hand out both regions' relays (each ferryd's [[signal.relay]]).
        assert {r["region"] for r in a.welcome["relays"]} == {r["region"] for r in b.welcome["relays"]}
    run(go())


def test_a_message_over_nats_max_payload_is_refused_and_counted(cluster, instances):
    c, f1, f2 = on_cluster(cluster, instances, extra="max_payload: 2048")

    async def go():
        a, b = await connect(f1.url), await connect(f2.url)
        await sees(a, b)
        await a.send(type="offer", to=b.key, payload="x" * 4000, id=5)
        m = await expect(a, type="error", code="unavailable")
        assert "max_payload" in m["message"]
        await a.send(type="offer", to=b.key, payload="small")
        assert (await expect(b, type="offer"))["payload"] == "small"
    run(go())
    assert f1.metric("ferry_signal_nats_dropped_total", {"reason": "max_payload"}) == 1


def test_ferry_tunnel_fails_over_to_another_instance_and_its_partner_hears_it_return(cluster, tmpdir_path):
    """Two `ferry tunnel` agents: A knows both instances (`--signal` twice), B only the second.
    The first instance dies; A moves to the second at once, and B hears A online again."""
    c = cluster(nodes=1).start()
    secret = "tunnel-failover-secret-0123456789"
    ports, fs = loopback_instances(c, tmpdir_path, secret)
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for s in sinks:
        s.bind(("127.0.0.1", 0))
    urls = [f"ws://127.0.0.1:{p}/v1/signal" for p in ports]
    agents = LoopbackAgents(tmpdir_path, ports[1], secret, sinks, relay_only=False, signals=(urls, urls[1:]))
    try:
        agents.wait("direct", timeout=20)
        os.killpg(fs[0].proc.pid, sig.SIGKILL)
        fs[0].proc.wait()
        log_a, log_b = (os.path.join(tmpdir_path, f"status{i}.json.log") for i in (0, 1))
        wait_until(lambda: f"reconnecting to 127.0.0.1:{ports[1]}" in open(log_a).read(), timeout=10, what=agents.logs)
        short_a = agents.keys[0][:8]
        # B hears A online again (A came back before its old instance was missed for 3 s, so
        # no offline in between; the slower case is the test above), and restarts ICE with it.
        wait_until(lambda: open(log_b).read().count(f"peer {short_a}…: online") >= 2, timeout=10, what=agents.logs)
        # A is registered at the second instance now, and the path between them still works.
        wait_until(lambda: fs[1].metric("ferry_signal_peers_connected") == 2, timeout=10)
        agents.wait("direct", timeout=20)
    finally:
        agents.close()
        for s in sinks:
            s.close()
        for f in fs:
            f.stop()


def test_ferry_bench_signaling_mode_on_one_and_across_two_instances(cluster, tmpdir_path):
    """`ferry bench ws://…`: its peers authenticate, and every message it sends is delivered and
    timed, on one instance and across two (each to the next peer, so every one crosses)."""
    import subprocess
    from conftest import binary
    c = cluster(nodes=1).start()
    secret = "bench-mode-secret-0123456789"
    ports, fs = loopback_instances(c, tmpdir_path, secret, extra="registrations_per_second = 100\nregistration_burst = 100\n")
    try:
        for urls in ([f"ws://127.0.0.1:{ports[0]}/v1/signal"], [f"ws://127.0.0.1:{p}/v1/signal" for p in ports]):
            r = subprocess.run([binary("ferry"), "bench", *urls, "--token-secret", secret, "--peers", "40", "--senders", "10",
                                "--rate", "400", "--duration", "1", "--json", "--quiet"], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            assert out["peers"] == 40 and out["sent"] >= 350 and out["delivered"] == out["sent"] and out["errors"] == {}, out
            assert 0 < out["latency_us"]["p50"] <= out["latency_us"]["p99"] <= out["latency_us"]["max"]
        assert fs[0].metric("ferry_signal_messages_forwarded_total") > 0 and fs[1].metric("ferry_signal_nats_delivered_total") > 0
    finally:
        for f in fs:
            f.stop()


def test_nats_over_tls_with_credentials(cluster, instances, tmpdir_path):
    """ferryd reaches a NATS that takes only TLS and a user: with signal.nats.ca_file, user and
    password it routes; with a wrong password it never connects and says so (metric, /readyz)."""
    from test_stream import make_cert
    cert, key = make_cert(tmpdir_path, "localhost")
    c = cluster(nodes=1, extra=f'tls {{ cert_file: "{cert}", key_file: "{key}" }}\n'
                               'authorization { user: ferry, password: "nats-pass-0123" }').start()
    urls = [u.replace("nats://127.0.0.1", "tls://localhost") for u in c.urls]
    auth = f'ca_file = "{cert}"\nuser = "ferry"\npassword = "nats-pass-0123"'
    f1, f2 = instances(urls, "one", extra=auth), instances(urls, "two", extra=auth)
    peers_see_each_other(f1, f2)

    async def go():
        a, b = await connect(f1.url), await connect(f2.url)
        await sees(a, b)
        await a.send(type="offer", to=b.key, payload="over tls")
        assert (await expect(b, type="offer"))["payload"] == "over tls"
    run(go())
    d = os.path.join(tmpdir_path, "wrong")
    os.makedirs(d)
    wrong = Ferryd(signal_config(free_port(), free_port(), Issuer(d).path, extra=f"""
[signal.nats]
servers = {json.dumps(urls)}
ca_file = "{cert}"
user = "ferry"
password = "not-the-password"
"""), d, env=nats_env())
    try:
        time.sleep(1.5)
        assert wrong.metric("ferry_signal_nats_connected") == 0
        assert "degraded" in http_get(wrong.admin_port, "/readyz")[1]
    finally:
        wrong.stop()


def test_garbage_on_ferry_subjects_is_counted_and_routing_goes_on(cluster, instances):
    """Anyone who may publish under the prefix: malformed subjects and payloads, a flood of
    heartbeats under made-up names, forged answers to this instance's requests. ferryd counts
    what is not Ferry's, keeps its tables bounded, and routes on."""
    import nats
    c, f1, f2 = on_cluster(cluster, instances)

    async def go():
        a, b = await connect(f1.url), await connect(f2.url)
        await sees(a, b)
        nc = await nats.connect(c.urls[0])
        net = "n" + b"net-a".hex()
        junk = [("ferry.hb", b""), ("ferry.r.one.m.x.y", b"g"), ("ferry.r.one.q.0.1.zz", b"h one notakey"),
                (f"ferry.{net}.p.{'00' * 31}", b"{}"), (f"ferry.{net}.o.{'zz' * 32}", b"1 x"), ("ferry.r.one.s.nff", b"\xff" * 100),
                (f"ferry.{net}.q", b"x" * 70000)]
        for _ in range(20):
            for subject, data in junk:
                await nc.publish(subject, data)
        # Forged answers for sequences this instance never used: nothing to answer.
        for seq in range(100):
            await nc.publish(f"ferry.r.one.m.0.{900000 + seq}", b"g")
        # 3,000 heartbeats under made-up names: at most 1,024 instances are remembered.
        for i in range(3000):
            await nc.publish(f"ferry.hb.fake{i}", b"")
        await nc.flush()
        await asyncio.sleep(0.5)
        await nc.close()
        await a.send(type="offer", to=b.key, payload="still routing")
        assert (await expect(b, type="offer"))["payload"] == "still routing"
    run(go())
    assert f1.metric("ferry_signal_nats_dropped_total", {"reason": "malformed"}) >= 20
    assert f1.metric("ferry_signal_nats_instances") <= 1024
    assert f1.metric("ferry_signal_nats_late_answers_total") >= 100
    assert f1.proc.poll() is None and f2.proc.poll() is None


def test_ferry_tunnel_agents_on_two_instances_relay_through_two_relays(cluster, tmpdir_path):
    """Two `ferry tunnel` agents, relay only, each signaling at its own instance and relaying
    through its own instance's TURN: ICE completes across instances, and packets cross."""
    c = cluster(nodes=1).start()
    secret = "tunnel-relayed-secret-0123456789"
    ports, fs = loopback_instances(c, tmpdir_path, secret)
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for s in sinks:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
    urls = [f"ws://127.0.0.1:{p}/v1/signal" for p in ports]
    agents = LoopbackAgents(tmpdir_path, ports[0], secret, sinks, relay_only=True, signals=(urls[:1], urls[1:]))
    try:
        a_local, b_local = agents.wait("relayed", timeout=30)
        for i in range(20):
            sinks[0].sendto(b"a-to-b %d" % i, a_local)
            assert sinks[1].recvfrom(2048)[0] == b"a-to-b %d" % i
            sinks[1].sendto(b"b-to-a %d" % i, b_local)
            assert sinks[0].recvfrom(2048)[0] == b"b-to-a %d" % i
        assert fs[0].metric("ferry_turn_allocations_active") >= 1 and fs[1].metric("ferry_turn_allocations_active") >= 1
        assert fs[0].metric("ferry_signal_messages_forwarded_total") > 0 and fs[1].metric("ferry_signal_messages_forwarded_total") > 0
    finally:
        agents.close()
        for s in sinks:
            s.close()
        for f in fs:
            f.stop()
