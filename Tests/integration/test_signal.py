"""Signaling over WebSocket against the real ferryd, with Python's websockets and cryptography
(X25519, keys for JWTs) and pyjwt, and end to end with two aioice agents."""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import subprocess
import time

import jwt as pyjwt
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from conftest import binary, free_port, http_get, turn_listeners, wait_until
from turnclient import insecure_client_context as client_ssl

SECRET = "signal-secret-0123456789"
b64 = lambda b: base64.b64encode(b).decode()
b64url = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(pub, network="net-a", ttl=600, secret=SECRET):
    r = subprocess.run([binary("ferry"), "token", "--secret", secret, "--network", network, "--peer", b64(pub), f"--ttl={ttl}"],
                       capture_output=True, text=True, check=True)
    return r.stdout.strip()


def int_bytes(n):
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


class Issuer:
    """An OIDC issuer's keys: RSA, P-256 and Ed25519, published as a JWKS file."""

    def __init__(self, directory):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        rn = self.rsa.public_key().public_numbers()
        en = self.ec.public_key().public_numbers()
        edx = self.ed.public_key().public_bytes_raw()
        jwks = {"keys": [
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "n": b64url(int_bytes(rn.n)), "e": b64url(int_bytes(rn.e))},
            {"kty": "EC", "kid": "e1", "crv": "P-256", "x": b64url(en.x.to_bytes(32, "big")), "y": b64url(en.y.to_bytes(32, "big"))},
            {"kty": "OKP", "kid": "d1", "crv": "Ed25519", "x": b64url(edx)},
        ]}
        self.path = os.path.join(directory, "jwks.json")
        with open(self.path, "w") as f:
            json.dump(jwks, f)

    def token(self, alg="RS256", iss="https://issuer.test", aud="ferry", network="net-a", ttl=600, key=None, **extra):
        claims = {"iss": iss, "aud": aud, "exp": int(time.time()) + ttl, "ferry_network": network, **extra}
        k, kid = {"RS256": (self.rsa, "r1"), "ES256": (self.ec, "e1"), "EdDSA": (self.ed, "d1")}[alg]
        return pyjwt.encode(claims, key or k, algorithm=alg, headers={"kid": kid})


def signal_config(tls_port, tcp_port, jwks, extra=""):
    return f"""
[server]
workers = 2
drain_seconds = 1
[turn]
realm = "ferry.test"
relay_ipv4 = "127.0.0.1"
static_auth_secrets = ["turn-secret-0123456789"]
[policy]
allow = ["127.0.0.0/8"]
[tls]
self_signed = true
[signal]
enabled = true
token_secrets = ["{SECRET}"]
jwks_file = "{jwks}"
jwt_issuer = "https://issuer.test"
jwt_audience = "ferry"
self_relay_urls = ["turn:127.0.0.1:{tcp_port}?transport=udp", "turns:127.0.0.1:{tls_port}?transport=tcp"]
{extra}
[[signal.relay]]
region = "us-east"
urls = ["turn:relay-us.example.org:3478"]
secret = "other-region-secret-0123"
{turn_listeners(udp=tcp_port, tcp=tcp_port, tls=tls_port)}"""


@pytest.fixture
def signal_server(ferryd_factory, tmpdir_path):
    def start(extra=""):
        issuer = Issuer(tmpdir_path)
        tls_port, tcp_port = free_port(), free_port()
        f = ferryd_factory(signal_config(tls_port, tcp_port, issuer.path, extra))
        f.tls_port, f.tcp_port, f.issuer = tls_port, tcp_port, issuer
        f.url = f"wss://127.0.0.1:{tls_port}/v1/signal"
        return f
    return start



class Peer:
    def __init__(self, ws, priv, welcome):
        self.ws, self.priv, self.welcome = ws, priv, welcome
        self.key = b64(priv.public_key().public_bytes_raw())

    async def send(self, **msg):
        await self.ws.send(json.dumps({"v": 1, **msg}))

    async def recv(self, timeout=5):
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def flush(self):
        """Returns once the server has read everything sent before: it answers a ping only after
        the frames ahead of it. `send` returns with up to the client's write limit still queued in
        its transport, and a blocking `wait_until` stops the event loop that would write it: a test
        that waited for the server's state right after sending waited for bytes never sent."""
        await asyncio.wait_for(await self.ws.ping(), 30)


def key_proof(priv, hello):
    """The X25519 proof of `priv`'s key for a server's hello (docs/signaling.md)."""
    pub = priv.public_key().public_bytes_raw()
    spub, challenge = base64.b64decode(hello["server_key"]), base64.b64decode(hello["challenge"])
    mac_key = hashlib.sha256(b"ferry-signal-v1" + priv.exchange(X25519PublicKey.from_public_bytes(spub))).digest()
    return hmac.new(mac_key, challenge + pub + spub, hashlib.sha256).digest()


async def connect(url, priv=None, make_token=None, bad_proof=False, max_size=2 ** 20, rcvbuf=None):
    """An authenticated peer. `rcvbuf` shrinks its socket's receive buffer (set before connecting),
    so that what the server sends it piles up inside the server rather than in the kernel."""
    priv = priv or X25519PrivateKey.generate()
    pub = priv.public_key().public_bytes_raw()
    kw = {}
    if rcvbuf:
        host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect((host, int(port)))
        kw = {"sock": sock, "server_hostname": "localhost"} if url.startswith("wss") else {"sock": sock}
    ws = await websockets.connect(url, ssl=client_ssl() if url.startswith("wss") else None, max_size=max_size, close_timeout=1, **kw)
    hello = json.loads(await ws.recv())
    assert hello["type"] == "hello"
    proof = key_proof(priv, hello)
    if bad_proof:
        proof = bytes(32)
    tok = make_token(pub) if make_token else token(pub)
    await ws.send(json.dumps({"v": 1, "type": "auth", "peer_key": b64(pub), "proof": b64(proof), "token": tok}))
    return Peer(ws, priv, json.loads(await ws.recv()))


async def refused(url, **kw):
    """Connects expecting a refusal: the error code, and the close code."""
    p = await connect(url, **kw)
    assert p.welcome["type"] == "error", p.welcome
    try:
        await asyncio.wait_for(p.ws.recv(), 5)
    except websockets.ConnectionClosed as e:
        return p.welcome["code"], e.rcvd.code if e.rcvd else None
    return p.welcome["code"], None


def run(coro):
    return asyncio.run(coro)


def test_authentication_and_relay_handout(signal_server):
    f = signal_server()

    async def go():
        p = await connect(f.url)
        assert p.welcome["type"] == "welcome" and p.welcome["network"] == "net-a" and p.welcome["peer_key"] == p.key
        regions = {r["region"]: r for r in p.welcome["relays"]}
        assert set(regions) == {"self", "us-east"}
        me = regions["self"]
        assert me["username"].endswith(":" + p.key)
        expected = base64.b64encode(hmac.new(b"turn-secret-0123456789", me["username"].encode(), hashlib.sha1).digest()).decode()
        assert me["credential"] == expected, "coturn-compatible REST credentials for this relay"
        await p.ws.close()
    run(go())
    assert f.metric("ferry_signal_registrations_total") == 1


def test_authentication_failures(signal_server):
    f = signal_server()

    async def go():
        assert await refused(f.url, bad_proof=True) == ("bad_proof", 4001)
        assert await refused(f.url, make_token=lambda pub: token(pub, ttl=-10)) == ("token_expired", 4001)
        assert await refused(f.url, make_token=lambda pub: token(pub, secret="forged-secret-000000000")) == ("auth_failed", 4001)
        # A token bound to another key cannot be borrowed.
        other = X25519PrivateKey.generate().public_key().public_bytes_raw()
        assert (await refused(f.url, make_token=lambda pub: token(other)))[0] == "auth_failed"
        iss = f.issuer
        wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        assert (await refused(f.url, make_token=lambda pub: iss.token(key=wrong_key)))[0] == "auth_failed"
        assert (await refused(f.url, make_token=lambda pub: iss.token(iss="https://evil.test")))[0] == "auth_failed"
        assert (await refused(f.url, make_token=lambda pub: iss.token(aud="someone-else")))[0] == "auth_failed"
        assert (await refused(f.url, make_token=lambda pub: iss.token(ttl=-120)))[0] == "token_expired"
        for alg in ("RS256", "ES256", "EdDSA"):
            p = await connect(f.url, make_token=lambda pub: iss.token(alg=alg))
            assert p.welcome["type"] == "welcome", (alg, p.welcome)
            await p.ws.close()
    run(go())
    assert f.metric("ferry_signal_auth_failures_total", {"reason": "bad_proof"}) == 1
    assert f.metric("ferry_signal_auth_failures_total", {"reason": "auth_failed"}) == 5


def test_offers_answers_candidates_and_presence(signal_server):
    f = signal_server()

    async def go():
        a = await connect(f.url)
        await a.send(type="subscribe", peers=[b64(X25519PrivateKey.generate().public_key().public_bytes_raw())])
        b_priv = X25519PrivateKey.generate()
        b_key = b64(b_priv.public_key().public_bytes_raw())
        await a.send(type="subscribe", peers=[b_key])
        b = await connect(f.url, priv=b_priv)
        assert await a.recv() == {"v": 1, "type": "peer_online", "peer": b_key}
        for kind, payload in (("offer", "o"), ("candidate", "c1"), ("candidate", "c2"), ("end_of_candidates", "")):
            await a.send(type=kind, to=b_key, payload=payload)
            m = await b.recv()
            assert m["type"] == kind and m["from"] == a.key and m["payload"] == payload and m["to"] == b_key
        await b.send(type="answer", to=a.key, payload="ans")
        m = await a.recv()
        assert m["type"] == "answer" and m["from"] == b_key
        await b.send(type="bye", to=a.key)
        assert (await a.recv())["type"] == "bye"
        await b.ws.close()
        assert await a.recv() == {"v": 1, "type": "peer_offline", "peer": b_key}
        await a.send(type="offer", to=b_key, payload="x", id=7)
        err = await a.recv()
        assert err["type"] == "error" and err["code"] == "peer_offline" and err["ref"] == 7
        await a.ws.close()
    run(go())
    assert f.metric("ferry_signal_messages_routed_total") == 6
    assert f.metric("ferry_signal_messages_dropped_total", {"reason": "peer_offline"}) == 1


def test_other_networks_are_unreachable(signal_server):
    f = signal_server()

    async def go():
        a = await connect(f.url)
        b = await connect(f.url, make_token=lambda pub: token(pub, network="net-b"))
        await a.send(type="subscribe", peers=[b.key])
        await a.send(type="offer", to=b.key, payload="hi")
        m = await a.recv()
        assert m["code"] == "peer_offline", "a peer of another network looks absent"
        with pytest.raises(asyncio.TimeoutError):
            await b.recv(timeout=0.5)
    run(go())


def test_duplicate_key_replaces_older_connection(signal_server):
    f = signal_server()

    async def go():
        priv = X25519PrivateKey.generate()
        old = await connect(f.url, priv=priv)
        new = await connect(f.url, priv=priv)
        assert new.welcome["type"] == "welcome"
        m = await old.recv()
        assert m["code"] == "replaced"
        with pytest.raises(websockets.ConnectionClosed) as e:
            await old.recv()
        assert e.value.rcvd.code == 4000
        # Someone without the private key cannot evict it.
        assert (await refused(f.url, make_token=lambda pub: token(priv.public_key().public_bytes_raw()), bad_proof=True))[0] == "bad_proof"
        other = await connect(f.url)
        await other.send(type="offer", to=new.key, payload="still here")
        assert (await new.recv())["payload"] == "still here"
    run(go())


def test_oversized_frame_closes_with_1009_and_malformed_json(signal_server):
    f = signal_server(extra="max_message = 4096")

    async def go():
        p = await connect(f.url)
        await p.ws.send("{not json")
        assert (await p.recv())["code"] == "bad_json"
        await p.ws.send(json.dumps({"v": 1, "type": "offer", "to": "nope"}))
        assert (await p.recv())["code"] == "bad_message"
        await p.ws.send("x" * 10000)
        with pytest.raises(websockets.ConnectionClosed) as e:
            await p.recv()
        assert e.value.rcvd.code == 1009
    run(go())
    assert f.metric("ferry_signal_messages_dropped_total", {"reason": "bad_json"}) == 1
    assert f.metric("ferry_websocket_errors_total") == 1


def test_rate_limits_bite_and_are_counted(signal_server):
    f = signal_server(extra="messages_per_second = 5\nmessage_burst = 10")

    async def go():
        a, b = await connect(f.url), await connect(f.url)
        for i in range(40):
            await a.send(type="candidate", to=b.key, payload=str(i))
        got, limited = 0, 0
        try:
            while True:
                m = await a.recv(timeout=0.5)
                limited += m.get("code") == "rate_limited"
        except asyncio.TimeoutError:
            pass
        try:
            while True:
                await b.recv(timeout=0.5)
                got += 1
        except asyncio.TimeoutError:
            pass
        return got, limited
    got, limited = run(go())
    assert 10 <= got <= 12 and got + limited == 40, (got, limited)
    assert f.metric("ferry_signal_messages_dropped_total", {"reason": "rate_limited"}) == limited


def test_plaintext_signaling_is_refused_without_tls(signal_server):
    f = signal_server()

    async def go():
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            await websockets.connect(f"ws://127.0.0.1:{f.tcp_port}/v1/signal")
        assert e.value.response.status_code == 403
    run(go())


async def ice_agent(peer, other_key, controlling, results):
    """One aioice agent, relay-only through the relay `peer`'s welcome hands out as "self": its
    ICE description goes to `other_key` over signaling, the other's comes back; then data."""
    import aioice
    relay = next(r for r in peer.welcome["relays"] if r["region"] == "self")
    host, port = relay["urls"][0].split(":")[1], int(relay["urls"][0].split(":")[2].split("?")[0])
    conn = aioice.Connection(ice_controlling=controlling, turn_server=(host, port), turn_username=relay["username"],
                             turn_password=relay["credential"], transport_policy=aioice.TransportPolicy.RELAY)
    await conn.gather_candidates()
    desc = {"ufrag": conn.local_username, "pwd": conn.local_password,
            "candidates": [c.to_sdp() for c in conn.local_candidates]}
    await peer.send(type="offer" if controlling else "answer", to=other_key, payload=json.dumps(desc))
    m = await peer.recv(timeout=10)
    remote = json.loads(m["payload"])
    conn.remote_username, conn.remote_password = remote["ufrag"], remote["pwd"]
    for c in remote["candidates"]:
        await conn.add_remote_candidate(aioice.Candidate.from_sdp(c))
    await conn.add_remote_candidate(None)
    await asyncio.wait_for(conn.connect(), 20)
    if controlling:
        await conn.send(b"ping over ferry")
        results["pong"] = await asyncio.wait_for(conn.recv(), 5)
    else:
        data = await asyncio.wait_for(conn.recv(), 5)
        await conn.send(data.replace(b"ping", b"pong"))
    results[controlling] = [c.type for c in conn.local_candidates]
    await conn.close()


def test_aioice_agents_connect_through_ferry_relay_only(signal_server):
    """End to end: two aioice agents exchange ICE credentials and candidates through Ferry's
    signaling, connect with a relay-only policy through Ferry's TURN, and exchange data."""
    f = signal_server()

    async def go():
        a, b = await connect(f.url), await connect(f.url)
        results = {}
        await asyncio.gather(ice_agent(a, b.key, True, results), ice_agent(b, a.key, False, results))
        return results
    results = run(go())
    assert results["pong"] == b"pong over ferry"
    assert results[True] == ["relay"] and results[False] == ["relay"], "relay-only candidates"
    assert f.metric("ferry_turn_allocations_created_total") >= 2
    assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_client"}) > 0


def test_jwks_fetched_from_the_issuer_at_start_and_on_reload(ferryd_factory, tmpdir_path):
    import http.server
    import signal as sig
    import threading
    from test_stream import make_cert
    cert, key = make_cert(tmpdir_path, "localhost")
    served = os.path.join(tmpdir_path, "www")
    os.mkdir(served)
    issuer = Issuer(served)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=served, **kw)

        def log_message(self, *a):
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

    httpd = Server(("::", 0), Handler)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    httpd.socket = sctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        tls_port, tcp_port = free_port(), free_port()
        config = signal_config(tls_port, tcp_port, "", "").replace(
            'jwks_file = ""', f'jwks_url = "https://localhost:{httpd.server_address[1]}/jwks.json"\njwks_ca_file = "{cert}"')
        f = ferryd_factory(config)
        url = f"wss://127.0.0.1:{tls_port}/v1/signal"

        async def go(tok):
            p = await connect(url, make_token=lambda pub: tok)
            await p.ws.close()
            return p.welcome.get("type"), p.welcome.get("code")
        assert run(go(issuer.token(alg="ES256"))) == ("welcome", None)
        # The issuer rotates its keys; a reload fetches them again.
        rotated = Issuer(served)
        f.signal(sig.SIGHUP)
        wait_until(lambda: f.metric("ferry_signal_jwks_fetches_total", {"result": "ok"}) == 2)
        assert f.metric("ferry_reloads_total", {"result": "ok"}) == 1
        assert run(go(rotated.token(alg="EdDSA"))) == ("welcome", None)
        assert run(go(issuer.token(alg="ES256")))[1] == "auth_failed", "the old key is gone"
    finally:
        httpd.shutdown()


def test_silent_client_is_closed_after_the_auth_timeout(signal_server):
    f = signal_server(extra="auth_timeout_seconds = 1")

    async def go():
        ws = await websockets.connect(f.url, ssl=client_ssl())
        assert json.loads(await ws.recv())["type"] == "hello"
        started = time.time()
        err = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert err["type"] == "error" and err["code"] == "not_authenticated", "every 4001 comes with its error"
        with pytest.raises(websockets.ConnectionClosed) as e:
            await asyncio.wait_for(ws.recv(), 5)
        assert e.value.rcvd.code == 4001
        assert time.time() - started < 3.5
    run(go())
    assert f.metric("ferry_signal_auth_failures_total", {"reason": "not_authenticated"}) == 1


def test_draining_server_sends_peers_away(signal_server):
    import signal as sig
    f = signal_server()

    async def go():
        p = await connect(f.url)
        f.signal(sig.SIGTERM)
        m = await p.recv()
        assert m["code"] == "draining"
        with pytest.raises(websockets.ConnectionClosed) as e:
            await p.recv()
        assert e.value.rcvd.code == 1001
    run(go())
    assert f.proc.wait(10) == 0


def test_jwt_within_the_leeway_opens_a_session_that_lasts_until_exp_plus_leeway(signal_server):
    """A JWT whose exp passed less than the 60 s leeway ago is accepted; welcome's expires is
    exp + 60 (in the future), and the session can send until then."""
    f = signal_server()

    async def go():
        exp = int(time.time()) - 30
        p = await connect(f.url, make_token=lambda pub: f.issuer.token(ttl=-30))
        assert p.welcome["type"] == "welcome", p.welcome
        assert p.welcome["expires"] == exp + 60 or p.welcome["expires"] == exp + 61
        assert p.welcome["expires"] > time.time()
        other = await connect(f.url)
        await p.send(type="offer", to=other.key, payload="still valid")
        assert (await other.recv())["payload"] == "still valid"
    run(go())


def test_text_that_is_not_utf8_closes_with_1007(signal_server):
    """RFC 6455 §8.1: an invalid UTF-8 text message fails the connection (1007)."""
    f = signal_server()

    async def go():
        p = await connect(f.url)
        payload = b'{"v":1,"type":"ping","x":"\xff\xfe"}'
        mask = os.urandom(4)
        frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        p.ws.transport.write(frame)
        with pytest.raises(websockets.ConnectionClosed) as e:
            await p.recv()
        assert e.value.rcvd.code == 1007
    run(go())
    assert f.metric("ferry_websocket_errors_total") == 1


def test_unreachable_issuer_never_stalls_the_server(ferryd_factory, tmpdir_path):
    """Issue 8 §5: a reload whose JWKS URL points at an issuer that accepts and never answers
    fetches off the control loop: /healthz answers within 100 ms throughout, the keys in use keep
    working, and the failure is counted and logged once the fetch times out."""
    import signal as sig
    issuer = Issuer(tmpdir_path)
    tls_port, tcp_port = free_port(), free_port()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)          # accepts (in the kernel) and never says a word
    config = signal_config(tls_port, tcp_port, issuer.path, "jwks_timeout_seconds = 2")
    f = ferryd_factory(config)
    url = f"wss://127.0.0.1:{tls_port}/v1/signal"

    async def welcome(tok):
        p = await connect(url, make_token=lambda pub: tok)
        await p.ws.close()
        return p.welcome.get("type")
    assert run(welcome(issuer.token())) == "welcome"
    with open(f.config_path, "w") as out:
        out.write(f'[admin]\naddress = "127.0.0.1:{f.admin_port}"\n' + config.replace(
            f'jwks_file = "{issuer.path}"', f'jwks_url = "https://127.0.0.1:{silent.getsockname()[1]}/jwks.json"'))
    f.signal(sig.SIGHUP)
    worst, started = 0.0, time.time()
    while time.time() - started < 3.5:
        t = time.time()
        assert http_get(f.admin_port, "/healthz", timeout=2)[0] == 200
        worst = max(worst, time.time() - t)
        time.sleep(0.02)
    assert worst < 0.1, f"/healthz took {worst * 1000:.0f} ms during the reload"
    assert run(welcome(issuer.token())) == "welcome", "the keys in use stay"
    assert f.metric("ferry_reloads_total", {"result": "ok"}) == 1
    assert f.metric("ferry_signal_jwks_fetches_total", {"result": "failed"}) == 1
    assert "jwks fetch failed" in f.output() and "timed out" in f.output()
    silent.close()


def test_time_claims_out_of_range_are_refused_and_harmless(signal_server):
    """exp and nbf must be numbers of seconds from 0 to the year 9999 (a fraction is allowed, RFC
    7519 §2). Found by the token fuzz target:
    a JWT signed with "exp": -1 trapped the signaling worker (the unsigned exp + leeway
    overflowed), and a ferry1 token with "exp": -1 read as 2^64 - 1, a token that never expired."""
    f = signal_server()

    def ferry1(pub, exp):
        payload = b64url(json.dumps({"net": "net-a", "exp": exp, "peer": b64(pub)}).encode())
        mac = hmac.new(SECRET.encode(), f"ferry1.{payload}".encode(), hashlib.sha256).digest()
        return f"ferry1.{payload}.{b64url(mac)}"

    async def go():
        iss = f.issuer
        for exp in (-1, 1e30, 2 ** 64, "2030-01-01"):
            assert (await refused(f.url, make_token=lambda pub: iss.token(exp=exp)))[0] == "auth_failed", exp
        assert (await refused(f.url, make_token=lambda pub: iss.token(nbf=-1)))[0] == "auth_failed"
        p = await connect(f.url, make_token=lambda pub: iss.token(exp=time.time() + 600.25))
        assert p.welcome["type"] == "welcome", p.welcome
        await p.ws.close()
        for exp in (-1, 2 ** 64):
            assert (await refused(f.url, make_token=lambda pub: ferry1(pub, exp)))[0] == "auth_failed", exp
        p = await connect(f.url, make_token=lambda pub: ferry1(pub, int(time.time()) + 600))
        assert p.welcome["type"] == "welcome", "the server still serves, and a good ferry1 token still works"
        await p.ws.close()
    run(go())
