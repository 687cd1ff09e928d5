#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz corpora (Tests/FerryFuzzTests/Corpus/TARGET/seed-*):
RFC 5769/8489 STUN vectors, the example config, and well-formed messages of every kind the
targets decode. Deterministic; rerun after changing it. Inputs found by fuzzing and captured
from the integration tests' traffic (scripts/fuzz-capture.py) sit next to these.
"""
import base64, hashlib, hmac, json, os, random, struct, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "FerryFuzzTests", "Corpus")
COOKIE = 0x2112A442


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def attr(t, v):
    return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


def stun(method, cls, attrs=b"", tid=b"0123456789ab"):
    t = (method & 0xF) | ((method & 0x70) << 1) | ((method & 0xF80) << 2) | ((cls & 1) << 4) | ((cls & 2) << 7)
    return struct.pack("!HHI", t, len(attrs), COOKIE) + tid + attrs


def xor_addr(ip4, port):
    return struct.pack("!BBH", 0, 1, port ^ (COOKIE >> 16)) + struct.pack("!I", ip4 ^ COOKIE)


def vectors():
    out, block = [], {}
    for line in open(os.path.join(ROOT, "Tests", "FerryWireTests", "Vectors", "rfc5769.txt"), encoding="utf-8"):
        line = line.strip()
        if line.startswith("hex:"):
            out.append(bytes.fromhex(line[4:].strip()))
    return out


def main():
    rnd = random.Random(9)
    # STUN: the RFC vectors and TURN requests of every method.
    msgs = vectors()
    msgs += [
        stun(0x001, 0),
        stun(0x003, 0, attr(0x0019, b"\x11\0\0\0") + attr(0x0006, b"alice") + attr(0x0014, b"ferry") + attr(0x0015, b"nonce")),
        stun(0x004, 0, attr(0x000D, struct.pack("!I", 0))),
        stun(0x008, 0, attr(0x0012, xor_addr(0xC000020A, 7000))),
        stun(0x009, 0, attr(0x000C, b"\x40\x00\0\0") + attr(0x0012, xor_addr(0xC000020A, 7000))),
        stun(0x006, 1, attr(0x0012, xor_addr(0xC000020A, 7000)) + attr(0x0013, b"wireguard")),
        stun(0x003, 3, attr(0x0009, b"\0\0\x04\x01Unauthorized") + attr(0x0015, b"n") + attr(0x0014, b"r")),
    ]
    for i, m in enumerate(msgs):
        write("stun", f"{i:02}", m)
    # Stream framing: a limit byte, then STUN and ChannelData back to back.
    cd = struct.pack("!HH", 0x4000, 5) + b"hello" + b"\0\0\0"
    write("framing", "mixed", b"\xff" + msgs[0] + cd + msgs[5] + cd)
    write("framing", "channeldata", b"\x10" + cd * 4)
    write("framing", "short-limit", b"\x00" + msgs[1])
    write("framing", "partial", b"\x80" + msgs[2] + cd[:6])
    write("framing", "bad-cookie", b"\x40" + msgs[3][:4] + b"\0\0\0\0" + msgs[3][8:])
    # Sniffer: the first bytes of each protocol on the shared port.
    write("sniffer", "tls", bytes.fromhex("160301020001") + bytes(40))
    write("sniffer", "stun", msgs[5])
    write("sniffer", "http", b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    write("sniffer", "channeldata", cd)
    write("sniffer", "short", b"\0\1\0")
    # HTTP heads (first byte: limits), with upgrades and pipelining.
    up = ("GET /v1/signal HTTP/1.1\r\nHost: relay.example\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    write("http-head", "upgrade", "\0" + up)
    write("http-head", "metrics", "\0GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n")
    write("http-head", "post", "\0POST /v1/drain HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    write("http-head", "smuggle", "\0POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
    write("http-head", "small-limits", "\x21" + up)
    write("http-head", "old-version", "\0GET / HTTP/2.0\r\nHost: a\r\n\r\n")

    # WebSocket client frames (masked), first byte: payload limit / 64.
    def frame(op, payload, fin=True, key=b"\x01\x02\x03\x04"):
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | op])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    hello = b'{"v":1,"type":"ping"}'
    write("websocket", "text", b"\xff" + frame(1, hello))
    write("websocket", "fragments", b"\xff" + frame(1, hello[:5], fin=False) + frame(0, hello[5:]))
    write("websocket", "control", b"\x10" + frame(9, b"ping") + frame(10, b"") + frame(8, b"\x03\xe8bye"))
    write("websocket", "long", b"\xff" + frame(1, b"x" * 300))
    write("websocket", "binary", b"\x02" + frame(2, bytes(range(100))))

    # Signaling JSON, as peers send it.
    key = base64.b64encode(bytes(range(32))).decode()
    for name, obj in {
        "auth": {"v": 1, "type": "auth", "peer_key": key, "proof": base64.b64encode(bytes(32)).decode(), "token": "ferry1.e30.AAAA"},
        "offer": {"v": 1, "type": "offer", "to": key, "payload": "sealed-offer", "id": 7},
        "subscribe": {"v": 1, "type": "subscribe", "peers": [key, key]},
        "nested": {"a": [1, 2.5, -3e10, True, False, None, {"b": "\u00e9\\\"\n"}], "c": {}},
        "numbers": [0, -0, 1e308, 5e-324, 123456789012345678901234567890, 0.1],
    }.items():
        write("json", name, json.dumps(obj, ensure_ascii=(name != "nested")))
    write("json", "escapes", r'"\ud83d\ude00 \u0000 \t"')

    # Tokens: mode byte, 4 bytes of "now", then a token (modes 0, 2) or claims (1, 3).
    now = struct.pack("!I", 1_800_000_000)
    def b64u(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    claims = json.dumps({"net": "a", "exp": 1_800_000_600, "peer": key}).encode()
    tok_payload = b64u(claims)
    tok = f"ferry1.{tok_payload}." + b64u(hmac.new(b"0123456789abcdef", f"ferry1.{tok_payload}".encode(), hashlib.sha256).digest())
    write("token", "ferry1", b"\0" + now + tok.encode())
    write("token", "ferry1-claims", b"\1" + now + claims)
    write("token", "ferry1-claims-huge-exp", b"\1" + now + b'{"net":"a","exp":18446744073709551615}')
    eddsa, none = b64u(b'{"alg":"EdDSA"}'), b64u(b'{"alg":"none"}')
    write("token", "jwt-forged", b"\2" + now + f"{eddsa}.{b64u(claims)}.{b64u(bytes(64))}".encode())
    write("token", "jwt-none", b"\2" + now + f"{none}.{b64u(claims)}.".encode())
    jwt_claims = json.dumps({"iss": "https://issuer.fuzz", "aud": ["ferry"], "exp": 1_800_000_600, "nbf": 1, "net": "a", "peer": key}).encode()
    write("token", "jwt-claims", b"\3" + now + jwt_claims)
    write("token", "jwt-header-claims", b"\3" + now + b'{"alg":"EdDSA","kid":"k1","typ":"JWT"}\0' + jwt_claims)

    # JWKS documents.
    e = b64u(b"\x01\x00\x01")
    write("jwks", "rsa", json.dumps({"keys": [{"kty": "RSA", "kid": "r", "n": b64u(bytes([0xC5]) + bytes(255)), "e": e}]}))
    write("jwks", "ec", json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": b64u(bytes(32)), "y": b64u(bytes(32))}]}))
    write("jwks", "okp", json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64u(bytes(range(32))), "kid": "k1"}]}))
    write("jwks", "mixed", json.dumps({"keys": [{"kty": "oct", "k": "AAAA"}, {"kty": "OKP", "crv": "X25519", "x": "AA"}, {}]}))
    write("jwks", "empty", '{"keys":[]}')

    # Config: mode 0 is the raw text; other modes build a file from the key table.
    example = open(os.path.join(ROOT, "config", "ferry.example.toml"), encoding="utf-8").read()
    write("config", "example", "\0" + example)
    write("config", "minimal", '\0[turn]\nrealm = "x"\n[[listener]]\nname = "u"\ntransport = "udp"\naddress = "127.0.0.1:3478"\n')
    write("config", "bad-types", '\0[server]\nworkers = "two"\n[turn]\nmax_allocations = -1\n[[turn.user]]\nname = 3\n')
    write("config", "syntax", "\0[turn\nrealm = ")
    for i in range(4):
        write("config", f"keys-{i}", bytes([1 + i]) + bytes(rnd.randrange(256) for _ in range(64)))

    # The stateful targets read their input as a script: random bytes are complete scripts.
    for i in range(8):
        write("turn-server", f"script-{i}", bytes(rnd.randrange(256) for _ in range(64 + 64 * i)))
        write("signal-session", f"script-{i}", bytes(rnd.randrange(256) for _ in range(64 + 64 * i)))
    # Signaling: open slot 0, authenticate, route; open slot 1 the same; then a ping.
    write("signal-session", "open-auth-route", bytes([0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 2, 1, 5, 3, 0, 0, 9, 7]))

    # The peer side. Signaling client: a chunk size, then what a server sends (unmasked frames).
    def server_frame(op, payload, fin=True):
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | op]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack("!H", n))
        return head + payload
    key = base64.b64encode(bytes(32)).decode()
    hello = json.dumps({"v": 1, "type": "hello", "server_key": key, "challenge": key, "ping_interval": 20}).encode()
    welcome = json.dumps({"v": 1, "type": "welcome", "peer_key": key, "network": "n", "expires": 1,
                          "relays": [{"region": "r", "urls": ["turn:h:3478"], "username": "1:k", "credential": "c", "expires": 1}]}).encode()
    offer = json.dumps({"v": 1, "type": "offer", "to": key, "payload": "x", "from": key}).encode()
    replaced = json.dumps({"v": 1, "type": "error", "code": "replaced", "message": "m"}).encode()
    write("signal-client", "session", b"\x3f" + server_frame(1, hello) + server_frame(1, welcome) + server_frame(1, offer))
    write("signal-client", "fragments", b"\x05" + server_frame(1, hello[:9], fin=False) + server_frame(0, hello[9:]))
    write("signal-client", "ping-close", b"\x10" + server_frame(9, b"abc") + server_frame(1, replaced) + server_frame(8, b"\x0f\xa0"))
    write("signal-client", "presence", b"\x3f" + server_frame(1, json.dumps({"v": 1, "type": "peer_online", "peer": key}).encode()))
    write("signal-client", "bad-frame", b"\x01" + b"\x81\xfe\x00")
    # TURN client: op 3/4 delivers an answer (a length byte, then the message; the fuzz target
    # gives it the id of a pending request).
    def answer(m):
        return bytes([4, len(m)]) + m
    challenge = stun(0x003, 0x11, attr(0x0009, b"\0\0\x04\x01Unauthorized") + attr(0x0014, b"ferry") + attr(0x0015, b"nonce-1"))
    allocated = stun(0x003, 0x10, attr(0x0016, xor_addr(0xC6336401, 50000)) + attr(0x0020, xor_addr(0xCB007105, 40000)) + attr(0x000D, struct.pack("!I", 600)))
    stale = stun(0x008, 0x11, attr(0x0009, b"\0\0\x04\x26Stale Nonce") + attr(0x0015, b"nonce-2"))
    write("turn-client", "challenge-allocate", b"\0" + answer(challenge) + answer(allocated))
    write("turn-client", "permit-stale", b"\0" + answer(challenge) + answer(allocated) + bytes([0, 1, 2, 3, 4]) + answer(stale))
    write("turn-client", "bind-tick", b"\1" + bytes([1, 192, 0, 2, 1, 0x1b, 0x58, 2, 0xff, 0xff, 2, 0xff, 0xff]))
    write("turn-client", "timeouts", b"\0" + bytes([2, 0xff, 0xff]) * 8)
    write("turn-client", "error", b"\0" + answer(stun(0x003, 0x11, attr(0x0009, b"\0\0\x04\x56Quota"))))
    # Sealed envelopes: text that is almost an envelope.
    write("sealed", "empty", b"")
    write("sealed", "base64", base64.b64encode(b"\x01" + bytes(8) + bytes(12) + bytes(32)))
    write("sealed", "version-2", base64.b64encode(b"\x02" + bytes(60)))
    write("sealed", "short", base64.b64encode(b"\x01" + bytes(20)))
    write("sealed", "junk", "not base64 at all \u00e9")
    # Between instances over NATS: subjects (first byte 0) and payloads.
    key = base64.b64encode(bytes(range(32))).decode()
    net = "n" + b"net-a".hex()
    write("cluster", "peer-subject", b"\0" + f"ferry.{net}.p.{bytes(range(32)).hex()}".encode())
    write("cluster", "route-reply", b"\0ferry.r.fuzz.m.1.42")
    write("cluster", "query-reply", f"\0ferry.r.fuzz.q.0.7.{net}".encode())
    write("cluster", "wildcards", b"\0ferry.a.>.*.p.zz")
    write("cluster", "claim", b"\1c 1700000000000000000 eu-1")
    write("cluster", "holds", f"\1h us-2 {key} {key}".encode())
    write("cluster", "presence", b"\x011 eu-1")
    write("cluster", "query", f"\x02{key} junk {key}".encode())
    # The native relay's script (Sources/FerryFuzz/RelayTarget.swift): op bytes and their operands.
    # Two peers bind to each other (each bind twice: challenge, then the cookie), a handshake and data.
    bind = lambda frm, me, partner: bytes([frm, 0, 1, me, 100, 0, 0, 1, 1, 1, partner])
    write("relay", "bind-pair", b"\x20" + bind(0, 0, 1) + bind(0, 0, 1) + bind(1, 1, 0) + bind(1, 1, 0)
          + bytes([0, 2, 0, 0, 1]) + bytes([1, 2, 1, 0]) + bytes([0, 2, 2, 1, 60]) + bytes([0, 5, 40]))
    write("relay", "raw-control", b"\0" + bytes([2, 0, 0, 20]) + stun(0x070, 0) + bytes([1, 0, 0, 20]) + stun(0x001, 0))
    write("relay", "raw-wireguard", b"\0" + bytes([3, 2, 3, 40]) + b"\x04\0\0\0" + bytes(36))
    return 0


if __name__ == "__main__":
    sys.exit(main())
