"""The admin API (docs/admin-api.md) with curl and `ferry status`: /v1/status against /metrics,
the control and session endpoints refusing a caller without the bearer token and working for
one with it, paged listings, ending allocations by user and signaling sessions by network or
key (each logged with `ended_by_operator`), reload and drain."""
import asyncio
import json
import os
import socket
import subprocess
import time

import websockets

import turnclient as tc
from conftest import binary, free_port, http_get, listener, turn_base, wait_until
from test_signal import Issuer, connect, run, signal_config, token

TOKEN = "admin-token-for-tests-0123456789"
REST_SECRET = "admin-rest-secret-0123456789"


def curl(port, path, method="GET", token=None):
    """(status, parsed JSON body) through curl."""
    args = ["curl", "-sS", "-X", method, "-o", "-", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"]
    if token:
        args[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), json.loads(body) if body.strip() else None


def rest_user(user):
    return tc.rest_credentials(REST_SECRET, user, int(time.time()) + 600)


def metrics(f):
    """Every series of /metrics, summed over label sets by name and by full key."""
    _, body = http_get(f.admin_port, "/metrics")
    out = {}
    for line in body.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
        name = key.split("{")[0]
        out.setdefault("sum:" + name, 0.0)
        out["sum:" + name] += float(value)
    return out


def admin_table(port, token, extra=""):
    return f'[admin]\naddress = "127.0.0.1:{port}"\n' + (f'token = "{token}"\n' if token else "") + extra


def turn_server(ferryd_factory, token=TOKEN, drain=1, extra=""):
    udp, port = free_port(socket.SOCK_DGRAM), free_port()
    base = turn_base(workers=2, drain=drain).replace('relay_ipv4 = "127.0.0.1"\n', f'relay_ipv4 = "127.0.0.1"\nstatic_auth_secrets = ["{REST_SECRET}"]\n')
    f = ferryd_factory(admin_table(port, token, extra) + '[log]\nformat = "json"\n' + base + listener("turn-udp", udp), admin_port=port)
    f.udp = udp
    return f


def test_status_matches_metrics_and_ferry_status_prints_it(ferryd_factory):
    f = turn_server(ferryd_factory)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2)
    clients = []
    for _ in range(3):
        c = tc.TurnClient(("127.0.0.1", f.udp), "test", "pass")
        r = c.allocate()
        assert r.ok
        assert c.create_permission("127.0.0.1", peer.getsockname()[1]).ok
        clients.append(c)
    # A drop: a Send indication to a peer without a permission.
    data, _ = tc.encode(tc.SEND, 1, [(tc.XOR_PEER_ADDRESS, tc.xor_address("127.0.0.2", 9, os.urandom(12))), (tc.DATA_ATTR, b"x")])
    clients[0].send_raw(data)
    wait_until(lambda: metrics(f).get("sum:ferry_turn_drops_total", 0) >= 1)
    code, status = curl(f.admin_port, "/v1/status")
    m = metrics(f)
    assert code == 200
    assert status["ready"] is True and status["draining"] is False
    assert status["allocations"]["active"] == m["ferry_turn_allocations_active"] == 3
    assert status["allocations"]["created_total"] == m["ferry_turn_allocations_created_total"]
    assert sum(w["allocations"] for w in status["workers"]) == 3 and len(status["workers"]) == 2
    assert status["relayed"]["bytes_to_peer_total"] == m['ferry_turn_relayed_bytes_total{direction="to_peer"}']
    assert status["drops_total"] == m["sum:ferry_turn_drops_total"] + m.get("sum:ferry_udp_drops_total", 0) >= 1
    assert status["drops_by_reason"].get("no_permission") == m['ferry_turn_drops_total{reason="no_permission"}']
    assert status["uptime_seconds"] >= 0 and status["version"]
    assert {"name": "turn-udp", "service": "turn", "transport": "udp", "address": f"127.0.0.1:{f.udp}"} in status["listeners"]
    assert status["reload"]["last"] is None and status["native_relay"] is None

    out = subprocess.run([binary("ferry"), "status", f"http://127.0.0.1:{f.admin_port}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert ": ready," in out.stdout and "allocations   3 of" in out.stdout and f"turn-udp udp 127.0.0.1:{f.udp}" in out.stdout
    js = subprocess.run([binary("ferry"), "status", "--json", f"127.0.0.1:{f.admin_port}"], capture_output=True, text=True)
    assert js.returncode == 0 and json.loads(js.stdout)["allocations"]["active"] == 3
    for c in clients:
        c.close()


def test_control_and_session_endpoints_refuse_without_the_token(ferryd_factory):
    # No token configured: every such endpoint is off (403), whoever asks.
    off = turn_server(ferryd_factory, token=None)
    assert curl(off.admin_port, "/v1/allocations")[0] == 403
    assert curl(off.admin_port, "/v1/reload", "POST", token=TOKEN)[0] == 403
    # With a token: none or a wrong one is 401; the right one works; reads stay open.
    f = turn_server(ferryd_factory)
    for path, method in (("/v1/allocations", "GET"), ("/v1/peers", "GET"), ("/v1/allocations/end?user=test", "POST"),
                         ("/v1/peers/end?network=n", "POST"), ("/v1/reload", "POST"), ("/v1/drain", "POST")):
        assert curl(f.admin_port, path, method)[0] == 401, path
        assert curl(f.admin_port, path, method, token=TOKEN[:-1] + "x")[0] == 401, path
    assert f.metric("ferry_admin_unauthorized_total") == 12
    assert curl(f.admin_port, "/v1/allocations", token=TOKEN)[0] == 200
    assert curl(f.admin_port, "/v1/status")[0] == 200 and http_get(f.admin_port, "/")[0] == 200
    # A control endpoint takes POST only, a listing GET only.
    assert curl(f.admin_port, "/v1/reload", token=TOKEN)[0] == 405
    assert curl(f.admin_port, "/v1/allocations", "POST", token=TOKEN)[0] == 405
    assert curl(f.admin_port, "/v1/allocations/end", "POST", token=TOKEN)[0] == 400  # no selector
    # Reload through the API, then a broken file: failed, counted, the running config stays.
    code, body = curl(f.admin_port, "/v1/reload", "POST", token=TOKEN)
    assert code == 200 and body["result"] == "ok"
    status = curl(f.admin_port, "/v1/status")[1]
    assert status["reload"]["result"] == "ok" and status["reload"]["origin"] == "admin API" and status["reload"]["ok_total"] == 1
    with open(f.config_path, "a") as fh:
        fh.write("\n[turn]\nrealm = 1\n")
    code, body = curl(f.admin_port, "/v1/reload", "POST", token=TOKEN)
    assert code == 422 and body["result"] == "failed"
    assert f.metric("ferry_reloads_total", {"result": "failed"}) == 1
    assert curl(f.admin_port, "/v1/status")[1]["reload"]["result"] == "failed"


def test_listing_and_ending_allocations_by_user(ferryd_factory):
    f = turn_server(ferryd_factory)
    clients = []
    for user, password in [("test", "pass"), rest_user("alice"), rest_user("alice")]:
        c = tc.TurnClient(("127.0.0.1", f.udp), user, password)
        assert c.allocate().ok
        clients.append(c)
    code, page = curl(f.admin_port, "/v1/allocations?limit=2", token=TOKEN)
    assert code == 200 and page["total"] == 3 and len(page["items"]) == 2
    rest = curl(f.admin_port, "/v1/allocations?limit=2&offset=2", token=TOKEN)[1]
    assert len(rest["items"]) == 1
    everyone = page["items"] + rest["items"]
    assert sorted(a["client"] for a in everyone) == sorted(f"127.0.0.1:{c.sock.getsockname()[1]}" for c in clients)
    assert all(a["transport"] == "udp" and a["relayed"] and a["age_seconds"] >= 0 for a in everyone)
    alice = curl(f.admin_port, "/v1/allocations?user=alice", token=TOKEN)[1]
    assert alice["total"] == 2 and {a["user"] for a in alice["items"]} == {"alice"}
    assert curl(f.admin_port, "/v1/allocations?limit=0", token=TOKEN)[0] == 400

    code, body = curl(f.admin_port, "/v1/allocations/end?user=alice", "POST", token=TOKEN)
    assert code == 200 and body["ended"] == 2
    assert curl(f.admin_port, "/v1/allocations", token=TOKEN)[1]["total"] == 1
    # Their clients find them gone: a Refresh is answered 437 (allocation mismatch).
    assert clients[1].refresh().code == 437
    assert clients[0].refresh().ok
    ended = [json.loads(l) for l in f.output().splitlines() if l.startswith("{") and "ended_by_operator" in l]
    assert len(ended) == 2 and {e["user"] for e in ended} == {"alice"}
    # By client address too.
    port = clients[0].sock.getsockname()[1]
    assert curl(f.admin_port, f"/v1/allocations/end?client=127.0.0.1:{port}", "POST", token=TOKEN)[1]["ended"] == 1
    assert f.metric("ferry_turn_allocations_active") == 0


def test_listing_and_ending_signaling_sessions(ferryd_factory, tmpdir_path):
    tls_port, tcp_port, port = free_port(), free_port(), free_port()
    config = signal_config(tls_port, tcp_port, Issuer(tmpdir_path).path)
    f = ferryd_factory(admin_table(port, TOKEN) + config, admin_port=port)
    f.url = f"wss://127.0.0.1:{tls_port}/v1/signal"
    closes = {}

    async def go():
        a = await connect(f.url)
        b = await connect(f.url)
        others = await connect(f.url, make_token=lambda pub: token(pub, network="net-b"))
        code, page = curl(f.admin_port, "/v1/peers", token=TOKEN)
        assert code == 200 and page["total"] == 3
        assert {p["peer"] for p in page["items"]} == {a.key, b.key, others.key}
        assert {p["network"] for p in page["items"]} == {"net-a", "net-b"}
        assert all(p["transport"] == "wss" for p in page["items"])
        assert curl(f.admin_port, "/v1/peers?network=net-b", token=TOKEN)[1]["total"] == 1
        code, body = curl(f.admin_port, "/v1/peers/end?network=net-a", "POST", token=TOKEN)
        assert code == 200 and body["ended"] == 2
        for p in (a, b):
            try:
                await asyncio.wait_for(p.ws.recv(), 5)
            except websockets.ConnectionClosed as e:
                closes[p.key] = e.rcvd.code if e.rcvd else None
        assert curl(f.admin_port, "/v1/peers", token=TOKEN)[1]["total"] == 1
        assert curl(f.admin_port, f"/v1/peers/end?peer={others.key.replace('+', '%2B').replace('/', '%2F').replace('=', '%3D')}",
                    "POST", token=TOKEN)[1]["ended"] == 1
        return a.key, b.key
    keys = run(go())
    assert set(closes.values()) == {1008}, closes
    lines = wait_until(lambda: [l for l in f.output().splitlines() if "signaling session ended" in l and "ended_by_operator" in l]
                       if len([l for l in f.output().splitlines() if "ended_by_operator" in l]) == 3 else None)
    assert all(any(k in l for l in lines) for k in keys)


def test_drain_through_the_api_and_ferry_status_says_so(ferryd_factory):
    f = turn_server(ferryd_factory, drain=3)
    c = tc.TurnClient(("127.0.0.1", f.udp), "test", "pass")
    assert c.allocate().ok  # a live session: the drain waits for it
    code, body = curl(f.admin_port, "/v1/drain", "POST", token=TOKEN)
    assert code == 202 and body["draining"] is True
    wait_until(lambda: http_get(f.admin_port, "/readyz")[0] == 503)
    out = subprocess.run([binary("ferry"), "status", f"127.0.0.1:{f.admin_port}"], capture_output=True, text=True)
    assert out.returncode == 3 and "DRAINING" in out.stdout
    assert f.proc.wait(10) == 0
    assert any("ferryd.session" in l and '"reason":"shutdown"' in l for l in f.output().splitlines())
    gone = subprocess.run([binary("ferry"), "status", f"127.0.0.1:{f.admin_port}"], capture_output=True, text=True)
    assert gone.returncode == 1 and "ferry status:" in gone.stderr
