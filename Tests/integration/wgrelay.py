"""A native-relay client written from docs/relay-protocol.md alone (no Ferry code): credentials
minted as signaling mints them, FERRY-BIND with its challenge, and WireGuard messages with a real
mac1, for tests that talk to ferryd's relay port. Also a command line, so a test can bind from
inside a network namespace:

    python3 wgrelay.py bind RELAY_IP:PORT --secret S --network N --key B64 --partner B64
                       [--raw-port 51820] [--lifetime 0]

With --raw-port the bind leaves from that UDP port through a raw socket while another program
(wireguard-go) owns the port, as `ferry tunnel` shares WireGuard's port.

The stream side, for a peer whose UDP is blocked: bind over TLS, then carry WireGuard's packets
between a local UDP port (WireGuard's endpoint for the partner) and the stream:

    python3 wgrelay.py carry RELAY_IP:TLS_PORT --secret S --network N --key B64 --partner B64
                       --listen 127.0.0.1:PORT --deliver 127.0.0.1:51820"""
import base64
import hashlib
import hmac
import os
import select
import socket
import ssl
import struct
import sys
import time
import zlib

MAGIC = 0x2112A442
BIND_METHOD = 0x070
ATTR_CREDENTIAL, ATTR_PARTNER, ATTR_COOKIE, ATTR_STATE = 0x7F10, 0x7F11, 0x7F12, 0x7F13
ATTR_LIFETIME, ATTR_XOR_MAPPED, ATTR_ERROR, ATTR_MI256, ATTR_FINGERPRINT = 0x000D, 0x0020, 0x0009, 0x001C, 0x8028
LABEL = b"ferry-relay-credential-v1"


def stun_type(method, cls):
    """RFC 8489 §5: method bits interleaved with the two class bits (0 request, 2 success, 3 error)."""
    return ((method & 0xF80) << 2) | ((method & 0x70) << 1) | (method & 0xF) | ((cls & 2) << 7) | ((cls & 1) << 4)


def token(key, network, expiry):
    net = network.encode()
    return bytes([1]) + struct.pack(">Q", expiry) + key + bytes([len(net)]) + net


def integrity_key(secret, tok):
    return hmac.new(secret.encode(), LABEL + tok, hashlib.sha256).digest()


def credential(secret, key, network, ttl=3600, expiry=None):
    """(token, key) as signaling hands them out for a relay holding `secret`."""
    tok = token(key, network, expiry if expiry is not None else int(time.time()) + ttl)
    return tok, integrity_key(secret, tok)


def _attr(t, v):
    return struct.pack(">HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


def message(method, cls, attrs, tid=None, key=None, fingerprint=True):
    tid = tid or os.urandom(12)
    body = b"".join(_attr(t, v) for t, v in attrs)
    if key is not None:
        head = struct.pack(">HHI", stun_type(method, cls), len(body) + 36, MAGIC) + tid
        body += _attr(ATTR_MI256, hmac.new(key, head + body, hashlib.sha256).digest())
    if fingerprint:
        head = struct.pack(">HHI", stun_type(method, cls), len(body) + 8, MAGIC) + tid
        body += _attr(ATTR_FINGERPRINT, struct.pack(">I", (zlib.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF))
    return struct.pack(">HHI", stun_type(method, cls), len(body), MAGIC) + tid + body


def parse(data):
    """(type, transaction id, {attribute: value}) of a STUN message."""
    t, length, cookie = struct.unpack(">HHI", data[:8])
    assert cookie == MAGIC and len(data) == 20 + length, "not a STUN message"
    attrs, i = {}, 20
    while i < len(data):
        at, al = struct.unpack(">HH", data[i:i + 4])
        attrs.setdefault(at, data[i + 4:i + 4 + al])
        i += 4 + al + (-al % 4)
    return t, data[8:20], attrs


def xor_address(v, tid):
    family, xport = struct.unpack(">xBH", v[:4])
    port = xport ^ (MAGIC >> 16)
    if family == 1:
        return socket.inet_ntoa(struct.pack(">I", struct.unpack(">I", v[4:8])[0] ^ MAGIC)), port
    mask = struct.pack(">I", MAGIC) + tid
    return socket.inet_ntop(socket.AF_INET6, bytes(a ^ b for a, b in zip(v[4:20], mask))), port


class BindResult:
    def __init__(self, data):
        self.type, self.tid, self.attrs = parse(data)
        self.success = self.type == stun_type(BIND_METHOD, 2)
        err = self.attrs.get(ATTR_ERROR)
        self.code = (err[2] & 7) * 100 + err[3] if err else None
        self.state = struct.unpack(">I", self.attrs[ATTR_STATE])[0] if ATTR_STATE in self.attrs else None
        self.mapped = xor_address(self.attrs[ATTR_XOR_MAPPED], self.tid) if ATTR_XOR_MAPPED in self.attrs else None
        self.cookie = self.attrs.get(ATTR_COOKIE)
        self.raw = data

    def signed_by(self, key):
        """Whether the success carries a MESSAGE-INTEGRITY-SHA256 made with `key`."""
        t, _, _ = struct.unpack(">HHI", self.raw[:8])
        i = 20
        while i < len(self.raw):
            at, al = struct.unpack(">HH", self.raw[i:i + 4])
            if at == ATTR_MI256:
                head = struct.pack(">HHI", t, i - 20 + 36, MAGIC) + self.raw[8:20]
                return hmac.compare_digest(hmac.new(key, head + self.raw[20:i], hashlib.sha256).digest(), self.raw[i + 4:i + 4 + al])
            i += 4 + al + (-al % 4)
        return False


def bind_request(cred, partner, cookie=None, lifetime=None):
    tok, key = cred
    attrs = [(ATTR_CREDENTIAL, tok), (ATTR_PARTNER, partner)]
    if cookie is not None:
        attrs.append((ATTR_COOKIE, cookie))
    if lifetime is not None:
        attrs.append((ATTR_LIFETIME, struct.pack(">I", lifetime)))
    return message(BIND_METHOD, 0, attrs, key=key)


def bind(port, relay, cred, partner, lifetime=None, timeout=2.0):
    """The two steps: ask, take the cookie, ask again. `port` has send(data, addr) and
    recv(timeout) -> (data, addr). Returns the final BindResult."""
    port.send(bind_request(cred, partner), relay)
    first = BindResult(port.recv(timeout)[0])
    if first.code != 401 or first.cookie is None:
        return first
    port.send(bind_request(cred, partner, first.cookie, lifetime), relay)
    return BindResult(port.recv(timeout)[0])


class UDPPort:
    """An ordinary UDP socket as a port `bind` can use."""

    def __init__(self, host="127.0.0.1", port=0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.address = self.sock.getsockname()

    def send(self, data, addr):
        self.sock.sendto(data, addr)

    def recv(self, timeout=2.0):
        self.sock.settimeout(timeout)
        return self.sock.recvfrom(65535)

    def close(self):
        self.sock.close()


class RawPort:
    """UDP from a port another program owns (WireGuard's): sent through a raw socket with that
    source port, answers read from a raw socket's copies of what arrives for it."""

    def __init__(self, port):
        self.port = port
        self.out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        self.inp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)

    def send(self, data, addr):
        # Checksum 0: "no checksum", allowed for UDP over IPv4 (RFC 768).
        self.out.sendto(struct.pack(">HHHH", self.port, addr[1], 8 + len(data), 0) + data, (addr[0], 0))

    def recv(self, timeout=2.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no answer")
            self.inp.settimeout(left)
            packet, (src, _) = self.inp.recvfrom(65535)
            ihl = (packet[0] & 0xF) * 4
            sport, dport, _, _ = struct.unpack(">HHHH", packet[ihl:ihl + 8])
            payload = packet[ihl + 8:]
            # Only Ferry's answers: STUN's magic cookie (WireGuard's own packets are left alone).
            if dport == self.port and len(payload) >= 20 and struct.unpack(">I", payload[4:8])[0] == MAGIC:
                return payload, (src, sport)

    def close(self):
        self.out.close()
        self.inp.close()


class StreamPort:
    """The stream side: a TLS connection to a TURN stream listener whose first message is a
    bind. Control messages go as they are; WireGuard messages as ChannelData on channel 0x4000,
    padded to 4 (RFC 8656 §12.5's framing)."""

    CHANNEL = 0x4000

    def __init__(self, relay, tls=True):
        raw = socket.create_connection(relay, timeout=5)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            raw = ctx.wrap_socket(raw, server_hostname=relay[0])
        self.sock, self.buf, self.address = raw, b"", None

    def send(self, data, addr=None):
        self.sock.sendall(data)

    def send_wg(self, data):
        self.sock.sendall(struct.pack(">HH", self.CHANNEL, len(data)) + data + b"\0" * (-len(data) % 4))

    def _frame(self):
        """(kind, bytes) of a whole frame at the front of the buffer, or None."""
        if len(self.buf) < 4:
            return None
        if self.buf[0] & 0xC0 == 0x40:
            channel, n = struct.unpack(">HH", self.buf[:4])
            end = 4 + n + (-n % 4)
            if len(self.buf) < end:
                return None
            frame, self.buf = self.buf[4:4 + n], self.buf[end:]
            assert channel == self.CHANNEL, channel
            return "wg", frame
        n = 20 + struct.unpack(">H", self.buf[2:4])[0]
        if len(self.buf) < n:
            return None
        frame, self.buf = self.buf[:n], self.buf[n:]
        return "control", frame

    def frame(self, timeout=2.0):
        deadline = time.monotonic() + timeout
        while True:
            got = self._frame()
            if got:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no frame")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the relay")
            self.buf += chunk

    def recv(self, timeout=2.0):
        kind, data = self.frame(timeout)
        assert kind == "control", "a control message"
        return data, None

    def recv_wg(self, timeout=2.0):
        kind, data = self.frame(timeout)
        assert kind == "wg", "a WireGuard message"
        return data

    def close(self):
        self.sock.close()


def carry(stream, listen, deliver):
    """WireGuard's packets between a local UDP socket and the stream, until either closes."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(listen)
    stream.sock.setblocking(False)
    while True:
        ready, _, _ = select.select([udp, stream.sock], [], [], 30)
        if udp in ready:
            stream.sock.setblocking(True)
            stream.send_wg(udp.recvfrom(65535)[0])
            stream.sock.setblocking(False)
        if stream.sock in ready or stream.sock.pending():
            try:
                chunk = stream.sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                chunk = None
            if chunk == b"":
                return
            stream.buf += chunk or b""
            while (got := stream._frame()) is not None:
                if got[0] == "wg":
                    udp.sendto(got[1], deliver)


# WireGuard messages (the WireGuard paper §5.4): enough to exercise the relay's routing.

def mac1_key(public):
    return hashlib.blake2s(b"mac1----" + public).digest()


def initiation(sender, responder_public):
    m = struct.pack("<II", 1, sender) + os.urandom(108)
    return m + hashlib.blake2s(m, key=mac1_key(responder_public), digest_size=16).digest() + b"\0" * 16


def response(sender, receiver, initiator_public):
    m = struct.pack("<III", 2, sender, receiver) + os.urandom(48)
    return m + hashlib.blake2s(m, key=mac1_key(initiator_public), digest_size=16).digest() + b"\0" * 16


def data(receiver, payload=b""):
    return struct.pack("<IIQ", 4, receiver, 0) + payload + os.urandom(16)


def main(argv):
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["bind", "carry"])
    p.add_argument("relay")
    p.add_argument("--secret", required=True)
    p.add_argument("--network", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--partner", required=True)
    p.add_argument("--raw-port", type=int)
    p.add_argument("--lifetime", type=int)
    p.add_argument("--listen")
    p.add_argument("--deliver")
    a = p.parse_args(argv)
    host, port = a.relay.rsplit(":", 1)
    if a.command == "carry":
        stream = StreamPort((host, int(port)))
        cred = credential(a.secret, base64.b64decode(a.key), a.network)
        r = bind(stream, None, cred, base64.b64decode(a.partner))
        print(f"success={r.success} code={r.code} state={r.state} mapped={r.mapped} signed={r.signed_by(cred[1])}", flush=True)
        if not r.success:
            return 1
        lh, lp = a.listen.rsplit(":", 1)
        dh, dp = a.deliver.rsplit(":", 1)
        carry(stream, (lh, int(lp)), (dh, int(dp)))
        return 0
    port_ = RawPort(a.raw_port) if a.raw_port else UDPPort("0.0.0.0")
    cred = credential(a.secret, base64.b64decode(a.key), a.network)
    r = bind(port_, (host, int(port)), cred, base64.b64decode(a.partner), lifetime=a.lifetime)
    print(f"success={r.success} code={r.code} state={r.state} mapped={r.mapped} signed={r.signed_by(cred[1])}")
    return 0 if r.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
