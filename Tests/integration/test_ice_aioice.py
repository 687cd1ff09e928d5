"""The tunnel agent's ICE against aioice (a third-party RFC 8445 implementation), through Ferry's
signaling and Ferry's TURN. The aioice peer is written here from docs/signaling.md alone: the
WebSocket session with its X25519 proof, and the sealed payloads (X25519, SHA-256 key,
ChaCha20-Poly1305 with the sender, recipient, type and time bound in) with Python's
cryptography, so the envelope's specification is also proven implementable by a third party.
The agent runs without WireGuard (`--peer KEY=HOST:PORT`): what aioice sends arrives on a UDP
socket here, and what that socket sends to the agent's local endpoint reaches aioice."""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import subprocess
import time

import aioice
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat, NoEncryption

from conftest import binary, free_port, turn_base, turn_listeners, wait_until

TOKEN_SECRET = "ice-token-secret-0123456789"
REST_SECRET = "ice-rest-secret-0123456789"
LABEL = b"ferry-seal-v1"


def raw_public(key):
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Sealer:
    """docs/signaling.md, "Sealed payloads"."""

    def __init__(self, private):
        self.private, self.public = private, raw_public(private)

    def key(self, other):
        shared = self.private.exchange(X25519PublicKey.from_public_bytes(other))
        lo, hi = sorted([self.public, other])
        return hashlib.sha256(LABEL + shared + lo + hi).digest()

    @staticmethod
    def ad(kind, sender, recipient, t):
        return LABEL + bytes([len(kind)]) + kind.encode() + sender + recipient + b"\x01" + struct.pack("!Q", t)

    def seal(self, plaintext, kind, to):
        t, nonce = int(time.time() * 1000), os.urandom(12)
        ct = ChaCha20Poly1305(self.key(to)).encrypt(nonce, plaintext, self.ad(kind, self.public, to, t))
        return base64.b64encode(b"\x01" + struct.pack("!Q", t) + nonce + ct).decode()

    def open(self, envelope, kind, sender):
        raw = base64.b64decode(envelope)
        assert raw[0] == 1
        t = struct.unpack("!Q", raw[1:9])[0]
        assert abs(t - time.time() * 1000) < 120_000
        return ChaCha20Poly1305(self.key(sender)).decrypt(raw[9:21], raw[21:], self.ad(kind, sender, self.public, t))


def start_ferryd(ferryd_factory):
    port = free_port()
    base = turn_base().replace('relay_ipv4 = "127.0.0.1"\n', f'relay_ipv4 = "127.0.0.1"\nstatic_auth_secrets = ["{REST_SECRET}"]\n')
    f = ferryd_factory(base + f"""
[tls]
self_signed = true
[signal]
enabled = true
allow_plaintext = true
token_secrets = ["{TOKEN_SECRET}"]
self_relay_urls = ["turn:127.0.0.1:{port}?transport=udp"]
""" + turn_listeners(udp=port, tcp=port))
    f.port = port
    return f


def keypair_with_order(agent_controls):
    """(agent key, aioice key): the agent is controlling when its public key sorts higher."""
    while True:
        a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        if (raw_public(a) > raw_public(b)) == agent_controls:
            return a, b


def token(public):
    return subprocess.run([binary("ferry"), "token", "--secret", TOKEN_SECRET, "--network", "ice", "--peer",
                           base64.b64encode(public).decode()], capture_output=True, text=True, check=True).stdout.strip()


async def aioice_peer(port, me, agent_public, relay_only, controlling, sink):
    """Signals, runs aioice's ICE, then echoes: returns what came over the ICE connection."""
    sealer = Sealer(me)
    my_key = base64.b64encode(sealer.public).decode()
    agent_key = base64.b64encode(agent_public).decode()
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/signal") as ws:
        hello = json.loads(await ws.recv())
        server = base64.b64decode(hello["server_key"])
        shared = me.exchange(X25519PublicKey.from_public_bytes(server))
        mac = hashlib.sha256(b"ferry-signal-v1" + shared).digest()
        proof = hmac.new(mac, base64.b64decode(hello["challenge"]) + sealer.public + server, hashlib.sha256).digest()
        await ws.send(json.dumps({"v": 1, "type": "auth", "peer_key": my_key, "proof": base64.b64encode(proof).decode(),
                                  "token": token(sealer.public)}))
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        relay = welcome["relays"][0]
        conn = aioice.Connection(ice_controlling=controlling, components=1, stun_server=("127.0.0.1", port),
                                 turn_server=("127.0.0.1", port), turn_username=relay["username"],
                                 turn_password=relay["credential"], use_ipv6=False,
                                 transport_policy=aioice.TransportPolicy.RELAY if relay_only else aioice.TransportPolicy.ALL)
        await conn.gather_candidates()
        mine = {"ufrag": conn.local_username, "pwd": conn.local_password,
                "candidates": [c.to_sdp() for c in conn.local_candidates]}
        await ws.send(json.dumps({"v": 1, "type": "subscribe", "peers": [agent_key]}))

        async def remote_description(kind):
            while True:
                m = json.loads(await ws.recv())
                if m.get("type") == "peer_online" and controlling:
                    await ws.send(json.dumps({"v": 1, "type": "offer", "to": agent_key,
                                              "payload": sealer.seal(json.dumps(mine).encode(), "offer", agent_public)}))
                if m.get("type") == kind and m.get("from") == agent_key:
                    return json.loads(sealer.open(m["payload"], kind, agent_public))

        theirs = await asyncio.wait_for(remote_description("answer" if controlling else "offer"), 20)
        if not controlling:
            answer = dict(mine, offer=theirs["ufrag"])
            await ws.send(json.dumps({"v": 1, "type": "answer", "to": agent_key,
                                      "payload": sealer.seal(json.dumps(answer).encode(), "answer", agent_public)}))
        conn.remote_username, conn.remote_password = theirs["ufrag"], theirs["pwd"]
        if sink is not None:
            sink["agent_candidates"] = theirs["candidates"]
        for c in theirs["candidates"]:
            await conn.add_remote_candidate(aioice.Candidate.from_sdp(c))
        await conn.add_remote_candidate(None)
        await asyncio.wait_for(conn.connect(), 20)
        sink["pair"] = conn._nominated[1].remote_candidate.type if conn._nominated else None
        await conn.send(b"hello from aioice")
        got = await asyncio.wait_for(conn.recv(), 10)
        await conn.close()
        return got


@pytest.mark.parametrize("relay_only", [False, True], ids=["host-candidates", "relay-only"])
def test_agent_ice_completes_against_aioice(ferryd_factory, tmpdir_path, relay_only):
    f = start_ferryd(ferryd_factory)
    # Host candidates: the agent controls (it offers); relay-only: aioice controls (it offers).
    agent, peer = keypair_with_order(agent_controls=not relay_only)
    key_path = os.path.join(tmpdir_path, "agent.key")
    with open(key_path, "w") as kf:
        kf.write(base64.b64encode(agent.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode() + "\n")
    sink_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink_sock.bind(("127.0.0.1", 0))
    sink_sock.settimeout(10)
    status = os.path.join(tmpdir_path, "status.json")
    log = open(os.path.join(tmpdir_path, "agent.log"), "w")
    args = [binary("ferry"), "tunnel", "run", "--key", key_path,
            "--peer", f"{base64.b64encode(raw_public(peer)).decode()}=127.0.0.1:{sink_sock.getsockname()[1]}",
            "--signal", f"ws://127.0.0.1:{f.port}/v1/signal", "--token", token(raw_public(agent)), "--status-file", status,
            "--state-file", status + ".state"]
    agent_proc = subprocess.Popen(args + (["--relay-only"] if relay_only else []), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: os.path.exists(status), timeout=10)
        local = json.load(open(status))["peers"][0]["local_endpoint"]
        local = (local.split(":")[0], int(local.split(":")[1]))
        info = {}

        def echo():
            # What aioice sends arrives here; the answer goes back through the agent to aioice.
            data, _ = sink_sock.recvfrom(2048)
            sink_sock.sendto(b"echo:" + data, local)
            return data

        async def both():
            loop = asyncio.get_running_loop()
            echoed = loop.run_in_executor(None, echo)
            got = await aioice_peer(f.port, peer, raw_public(agent), relay_only, controlling=relay_only, sink=info)
            return got, await echoed

        got, seen = asyncio.run(both())
        assert seen == b"hello from aioice"
        assert got == b"echo:hello from aioice"
        # The agent's status (written every second) names the path it chose.
        expected = "relayed" if relay_only else "direct"
        wait_until(lambda: json.load(open(status))["peers"][0]["path"] == expected, timeout=5,
                   what=lambda: open(status).read())
        if relay_only:
            assert info["pair"] == "relay", info
        # A relay candidate names no host address (raddr 0.0.0.0 rport 0); relay-only, nothing else is sent.
        relays = [c for c in info["agent_candidates"] if " typ relay" in c]
        assert relays and all(c.endswith(" raddr 0.0.0.0 rport 0") for c in relays), info["agent_candidates"]
        if relay_only:
            assert relays == info["agent_candidates"], info["agent_candidates"]
    finally:
        agent_proc.terminate()
        agent_proc.wait(5)
        log.close()
        print(open(os.path.join(tmpdir_path, "agent.log")).read()[-3000:])
