"""The recipes of docs/integrations.md, each with credentials made the way that system makes them
(the algorithm of its own code, cited) and used against ferryd by a client that system's users
run: NetBird (coturn's turnutils_uclient, as NetBird's pion client speaks plain TURN over UDP),
Matrix Synapse (Chromium's WebRTC, as Element's calls), Nextcloud Talk (aioice), a plain WebRTC
app (Chromium, `iceServers` with TURN over UDP and TLS); then certificates from certbot through
deploy/certbot/ferry-deploy-hook and the ACME-less ferry-self-signed, swapped under a live TLS
session."""
import asyncio
import json
import os
import random
import socket
import ssl
import subprocess
import time

import pytest
import websockets

import turnclient as tc
from conftest import ROOT, free_port, listener, turn_base, wait_until
from test_admin_api import TOKEN, curl
from test_status_page import CHROMIUM, Browser
from test_turn import run_uclient

SECRET = "integration-shared-secret-0123456789"
HOOKS = os.path.join(ROOT, "deploy", "certbot")


def netbird_credentials(secret, ttl_seconds=12 * 3600):
    """NetBird's management server (TimeBasedAuthSecretsManager.GenerateCredentials): the
    username is the expiry alone, the password base64(HMAC-SHA1(secret, username));
    CredentialsTTL defaults to 12h."""
    username = str(int(time.time()) + ttl_seconds)
    return username, tc.rest_password(secret, username)


def synapse_credentials(secret, user_id, lifetime_ms=86_400_000):
    """Synapse's /voip/turnServer (turn_shared_secret): `"%d:%s" % (expiry, user_id)`,
    expiry = (now_ms + turn_user_lifetime) / 1000, base64(HMAC-SHA1)."""
    expiry = (int(time.time() * 1000) + lifetime_ms) // 1000
    username = "%d:%s" % (expiry, user_id)
    return username, tc.rest_password(secret, username)


def nextcloud_credentials(secret):
    """Nextcloud Talk (Config::getTurnSettings): valid 24 h, `$timestamp . ':' . $rnd` with 16
    characters of ISecureRandom's default set (letters, digits, + and /)."""
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
    username = f"{int(time.time()) + 86400}:{''.join(random.choice(chars) for _ in range(16))}"
    return username, tc.rest_password(secret, username)


def webrtc_app_credentials(secret, user, ttl=3600):
    """A plain app's backend, as coturn's REST API draft describes: `expiry:user`."""
    username = f"{int(time.time()) + ttl}:{user}"
    return username, tc.rest_password(secret, username)


@pytest.fixture
def relay(ferryd_factory, tmpdir_path):
    udp, tls = free_port(socket.SOCK_DGRAM), free_port()
    cfg = turn_base(workers=2).replace('relay_ipv4 = "127.0.0.1"\n', f'relay_ipv4 = "127.0.0.1"\nstatic_auth_secrets = ["{SECRET}"]\n')
    f = ferryd_factory('[log]\nformat = "json"\n[tls]\nself_signed = true\n' + cfg + listener("turn-udp", udp) + listener("turn-tls", tls, "tls"))
    f.udp, f.tls = udp, tls
    return f


def session_users(f):
    with open(f.log_path) as fh:
        return [json.loads(l)["user"] for l in fh if l.startswith("{") and '"ferryd.session"' in l]


def test_netbird_credentials_with_turnutils_uclient(relay):
    username, password = netbird_credentials(SECRET)
    peer_port = free_port(socket.SOCK_DGRAM)
    peer = subprocess.Popen(["turnutils_peer", "-p", str(peer_port), "-L", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        lost, out = run_uclient(["-p", str(relay.udp), "-u", username, "-w", password, "-e", "127.0.0.1", "-r", str(peer_port),
                                 "-n", "100", "-m", "2", "-l", "1000", "127.0.0.1"])
        assert lost == 0, out[-2000:]
    finally:
        peer.kill()
        peer.wait()
    assert relay.metric("ferry_turn_allocations_created_total") >= 2
    # A NetBird username is the expiry alone: the session log names it as the user.
    wait_until(lambda: username in session_users(relay))


WEBRTC = """
(async () => {
  const cfg = {iceServers: [{urls: URLS, username: USER, credential: PASS}], iceTransportPolicy: "relay"};
  const a = new RTCPeerConnection(cfg), b = new RTCPeerConnection(cfg);
  a.onicecandidate = e => e.candidate && b.addIceCandidate(e.candidate);
  b.onicecandidate = e => e.candidate && a.addIceCandidate(e.candidate);
  const ch = a.createDataChannel("t");
  const got = new Promise(r => b.ondatachannel = e => e.channel.onmessage = m => r(m.data));
  const open = new Promise(r => ch.onopen = r);
  await a.setLocalDescription(); await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(); await a.setRemoteDescription(b.localDescription);
  const timeout = new Promise((_, j) => setTimeout(() => j(new Error("timeout, ICE " + a.iceConnectionState)), 20000));
  await Promise.race([open, timeout]);
  ch.send("through ferry");
  const msg = await Promise.race([got, timeout]);
  const stats = await a.getStats();
  let pair;
  stats.forEach(s => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
  const local = stats.get(pair.localCandidateId);
  a.close(); b.close();
  return JSON.stringify({msg, type: local.candidateType, relayProtocol: local.relayProtocol, url: local.url});
})()
"""


async def evaluate(ws_url, expression):
    async with websockets.connect(ws_url, max_size=2 ** 24) as ws:
        await ws.send(json.dumps({"id": 1, "method": "Runtime.evaluate",
                                  "params": {"expression": expression, "awaitPromise": True, "returnByValue": True}}))
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 40))
            if m.get("id") == 1:
                assert "exceptionDetails" not in m["result"], m["result"]["exceptionDetails"]
                return json.loads(m["result"]["result"]["value"])


def webrtc_call(urls, username, password, *flags):
    """Two RTCPeerConnections in Chromium, relay candidates only, a data channel between them."""
    browser = Browser(*flags)
    try:
        js = WEBRTC.replace("URLS", json.dumps(urls)).replace("USER", json.dumps(username)).replace("PASS", json.dumps(password))
        return asyncio.run(evaluate(browser.ws_url, js))
    finally:
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by scripts/setup.sh test")
def test_matrix_synapse_credentials_with_chromium_webrtc(relay):
    username, password = synapse_credentials(SECRET, "@alice:example.org")
    r = webrtc_call([f"turn:127.0.0.1:{relay.udp}?transport=udp"], username, password)
    assert r["msg"] == "through ferry" and r["type"] == "relay" and r["relayProtocol"] == "udp", r
    relay.stop()  # the allocations end: one session line each, for the Matrix user
    assert "@alice:example.org" in session_users(relay)


def test_nextcloud_talk_credentials_with_aioice(relay):
    from aioice import turn as aioice_turn
    username, password = nextcloud_credentials(SECRET)

    async def scenario():
        loop = asyncio.get_running_loop()
        echoed = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if not echoed.done():
                    echoed.set_result(data)

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                self.transport.sendto(data, addr)

        echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        transport, _ = await aioice_turn.create_turn_endpoint(Client, server_addr=("127.0.0.1", relay.udp),
                                                              username=username, password=password, lifetime=600)
        try:
            transport.sendto(b"talk", echo.get_extra_info("sockname"))
            return await asyncio.wait_for(echoed, 5)
        finally:
            transport.close()
            echo.close()
    assert asyncio.run(scenario()) == b"talk"
    wait_until(lambda: username.split(":", 1)[1] in session_users(relay))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by scripts/setup.sh test")
def test_plain_webrtc_app_ice_servers_over_udp_and_tls(relay):
    username, password = webrtc_app_credentials(SECRET, "app-user-42")
    # TLS only: the relay candidate must come over turns:. Chromium verifies a TURN server's
    # certificate like a web site's; this lab's is self-signed, so it is told to accept it (a
    # deployment uses certbot's, below, which browsers trust).
    r = webrtc_call([f"turns:127.0.0.1:{relay.tls}?transport=tcp"], username, password, "--ignore-certificate-errors")
    assert r["msg"] == "through ferry" and r["type"] == "relay" and r["relayProtocol"] == "tls", r
    r = webrtc_call([f"turn:127.0.0.1:{relay.udp}?transport=udp", f"turns:127.0.0.1:{relay.tls}?transport=tcp"], username, password)
    assert r["msg"] == "through ferry" and r["type"] == "relay", r
    assert relay.metric("ferry_turn_auth_failures_total", {"reason": "wrong_credentials"}) == 0


# Certificates


def certificate_of(port):
    """The DER certificate a new TLS connection to ferryd presents."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s, ctx.wrap_socket(s, server_hostname="relay.lab.test") as t:
        return t.getpeercert(binary_form=True)


def test_certificates_from_certbot_and_self_signed_swap_under_a_live_tls_session(ferryd_factory, tmpdir_path):
    tls_dir = os.path.join(tmpdir_path, "tls")
    env = dict(os.environ, FERRY_TLS_DIR=tls_dir)
    first = subprocess.run([os.path.join(HOOKS, "ferry-self-signed"), "--days", "30", "relay.lab.test", "127.0.0.1"],
                           capture_output=True, text=True, env=dict(env, FERRY_RELOAD="true"))
    assert first.returncode == 0, first.stderr
    tls, admin = free_port(), free_port()
    f = ferryd_factory(f'[admin]\naddress = "127.0.0.1:{admin}"\ntoken = "{TOKEN}"\n' + turn_base(workers=2)
                       + f'[tls]\n[[tls.certificate]]\ncertificate = "{tls_dir}/fullchain.pem"\nkey = "{tls_dir}/privkey.pem"\n'
                       + listener("turn-tls", tls, "tls"), admin_port=admin)
    reload_cmd = f"kill -HUP {f.proc.pid}"
    cert_a = certificate_of(tls)
    status = curl(admin, "/v1/status", token=TOKEN)[1]   # names and files: for the token's holder only
    assert status["certificates"][0]["names"][:1] == ["relay.lab.test"] and 28 <= status["certificates"][0]["days_left"] <= 30
    # A live session over TLS: an allocation on one connection.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    live = ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls), timeout=5), server_hostname="relay.lab.test")
    client = tc.StreamTurnClient(live, "test", "pass")
    assert client.allocate().ok

    # A lab rotation: a new self-signed certificate, loaded on SIGHUP.
    rotated = subprocess.run([os.path.join(HOOKS, "ferry-self-signed"), "--days", "10", "relay.lab.test"],
                             capture_output=True, text=True, env=dict(env, FERRY_RELOAD=reload_cmd))
    assert rotated.returncode == 0, rotated.stderr
    assert "installed subject=CN = relay.lab.test" in rotated.stdout
    wait_until(lambda: f.metric("ferry_tls_certificate_reloads_total", {"result": "ok"}) == 1)
    cert_b = certificate_of(tls)
    assert cert_b != cert_a
    assert client.refresh().ok, "the session opened before the swap goes on over its connection"

    # certbot: a renewed lineage (live/DOMAIN/fullchain.pem, privkey.pem) through the deploy hook.
    lineage = os.path.join(tmpdir_path, "letsencrypt", "live", "relay.lab.test")
    os.makedirs(lineage)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "90", "-subj", "/CN=relay.lab.test",
                    "-addext", "subjectAltName=DNS:relay.lab.test", "-keyout", os.path.join(lineage, "privkey.pem"),
                    "-out", os.path.join(lineage, "fullchain.pem")], check=True, capture_output=True)
    hook = subprocess.run([os.path.join(HOOKS, "ferry-deploy-hook")], capture_output=True, text=True,
                          env=dict(env, RENEWED_LINEAGE=lineage, RENEWED_DOMAINS="relay.lab.test", FERRY_RELOAD=reload_cmd))
    assert hook.returncode == 0, hook.stderr
    wait_until(lambda: f.metric("ferry_tls_certificate_reloads_total", {"result": "ok"}) == 2)
    cert_c = certificate_of(tls)
    assert cert_c not in (cert_a, cert_b)
    assert client.refresh().ok
    assert 88 <= curl(admin, "/v1/status", token=TOKEN)[1]["certificates"][0]["days_left"] <= 90
    for name in ("fullchain.pem", "privkey.pem"):
        assert oct(os.stat(os.path.join(tls_dir, name)).st_mode & 0o777) == "0o640"
    # Without certbot's environment the hook refuses, and touches nothing.
    bare = subprocess.run([os.path.join(HOOKS, "ferry-deploy-hook")], capture_output=True, text=True,
                          env={k: v for k, v in env.items() if k != "RENEWED_LINEAGE"})
    assert bare.returncode != 0 and "RENEWED_LINEAGE" in bare.stderr
    assert certificate_of(tls) == cert_c
    live.close()
