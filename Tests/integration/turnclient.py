"""A small STUN/TURN client for the error paths the off-the-shelf clients cannot reach
(arbitrary XOR-PEER-ADDRESS encodings, address-family attributes, forged nonces). The happy
paths are tested with clients nobody here wrote: coturn's turnutils_* and aioice."""
import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import socket
import ssl
import struct
import zlib

COOKIE = 0x2112A442

ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION, CHANNEL_BIND, BINDING = 0x003, 0x004, 0x006, 0x007, 0x008, 0x009, 0x001
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, CHANNEL_NUMBER, LIFETIME = 0x0006, 0x0008, 0x0009, 0x000C, 0x000D
XOR_PEER_ADDRESS, DATA_ATTR, REALM, NONCE, XOR_RELAYED_ADDRESS = 0x0012, 0x0013, 0x0014, 0x0015, 0x0016
REQUESTED_ADDRESS_FAMILY, REQUESTED_TRANSPORT, XOR_MAPPED_ADDRESS = 0x0017, 0x0019, 0x0020
ADDITIONAL_ADDRESS_FAMILY, FINGERPRINT = 0x8000, 0x8028


def msg_type(method, cls):
    return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | ((cls & 1) << 4) | ((cls & 2) << 7)


def xor_address(ip, port, tid):
    addr = ipaddress.ip_address(ip)
    xport = port ^ (COOKIE >> 16)
    if addr.version == 4:
        return struct.pack("!BBH", 0, 1, xport) + struct.pack("!I", int(addr) ^ COOKIE)
    mask = struct.pack("!I", COOKIE) + tid
    return struct.pack("!BBH", 0, 2, xport) + bytes(a ^ b for a, b in zip(addr.packed, mask))


def parse_xor_address(value, tid):
    family, xport = value[1], struct.unpack("!H", value[2:4])[0]
    port = xport ^ (COOKIE >> 16)
    if family == 1:
        return str(ipaddress.ip_address(struct.unpack("!I", value[4:8])[0] ^ COOKIE)), port
    mask = struct.pack("!I", COOKIE) + tid
    return str(ipaddress.ip_address(bytes(a ^ b for a, b in zip(value[4:20], mask)))), port


def encode(method, cls, attrs, tid=None, key=None, fingerprint=True):
    tid = tid or os.urandom(12)
    body = b""
    for t, v in attrs:
        body += struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)
    header = lambda extra: struct.pack("!HHI", msg_type(method, cls), len(body) + extra, COOKIE) + tid
    if key is not None:
        mac = hmac.new(key, header(24) + body, hashlib.sha1).digest()
        body += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + mac
    if fingerprint:
        crc = (zlib.crc32(header(8) + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += struct.pack("!HHI", FINGERPRINT, 4, crc)
    return header(0) + body, tid


def rest_password(secret, username):
    """The TURN REST password for `username` (coturn's static-auth-secret scheme):
    base64(HMAC-SHA1(secret, username))."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def rest_credentials(secret, user, expiry):
    """A TURN REST username `expiry:user` and its password."""
    username = f"{expiry}:{user}"
    return username, rest_password(secret, username)


class Response:
    def __init__(self, data):
        mtype, length, cookie = struct.unpack("!HHI", data[:8])
        assert cookie == COOKIE, "not STUN"
        self.tid = data[8:20]
        self.cls = ((mtype >> 4) & 1) | ((mtype >> 7) & 2)
        self.attrs = {}
        i = 20
        while i < 20 + length:
            t, l = struct.unpack("!HH", data[i:i + 4])
            self.attrs.setdefault(t, []).append(data[i + 4:i + 4 + l])
            i += 4 + l + (-l % 4)
        self.raw = data

    @property
    def code(self):
        v = self.attrs.get(ERROR_CODE, [None])[0]
        return None if v is None else (v[2] & 7) * 100 + v[3]

    @property
    def ok(self):
        return self.cls == 2

    def addresses(self, t):
        return [parse_xor_address(v, self.tid) for v in self.attrs.get(t, [])]


def insecure_client_context():
    """A client TLS context that accepts ferryd's self-signed test certificates."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TurnClient:
    """One client five-tuple: a UDP socket talking to the server, with long-term credentials."""

    def __init__(self, server, username=None, password=None, family=socket.AF_INET, timeout=2, bind=None):
        self.server = server
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((bind or ("127.0.0.1" if family == socket.AF_INET else "::1"), 0))
        self.sock.settimeout(timeout)
        self.username, self.password = username, password
        self.realm = self.nonce = None

    def key(self):
        return hashlib.md5(f"{self.username}:{self.realm}:{self.password}".encode()).digest()

    def send_raw(self, data):
        self.sock.sendto(data, self.server)

    def transact(self, data, tid):
        self.sock.sendto(data, self.server)
        while True:
            r = Response(self.sock.recv(65536))
            if r.tid == tid:
                return r

    def challenge(self, method=ALLOCATE):
        """An unauthenticated request: learns REALM and NONCE from the 401."""
        data, tid = encode(method, 0, [(REQUESTED_TRANSPORT, struct.pack("!I", 17 << 24))])
        r = self.transact(data, tid)
        if REALM in r.attrs:
            self.realm = r.attrs[REALM][0].decode()
            self.nonce = r.attrs[NONCE][0].decode()
        return r

    def request(self, method, attrs=(), retry_stale=True):
        """An authenticated request. `attrs` is a list of (type, value), or a function of the
        transaction id giving one (XOR addresses depend on it). A 438 is retried once with the
        new nonce, as a client does."""
        if self.realm is None:
            self.challenge()
        make = attrs if callable(attrs) else (lambda tid: list(attrs))
        tid = os.urandom(12)
        full = make(tid) + [(USERNAME, self.username.encode()), (REALM, self.realm.encode()), (NONCE, self.nonce.encode())]
        data, _ = encode(method, 0, full, tid=tid, key=self.key())
        r = self.transact(data, tid)
        if r.code == 438 and retry_stale:
            self.nonce = r.attrs[NONCE][0].decode()
            return self.request(method, attrs, retry_stale=False)
        return r

    def allocate(self, extra=()):
        return self.request(ALLOCATE, [(REQUESTED_TRANSPORT, struct.pack("!I", 17 << 24))] + list(extra))

    def refresh(self, lifetime=None):
        return self.request(REFRESH, [] if lifetime is None else [(LIFETIME, struct.pack("!I", lifetime))])

    def create_permission(self, ip, port=9):
        return self.request(CREATE_PERMISSION, lambda tid: [(XOR_PEER_ADDRESS, xor_address(ip, port, tid))])

    def channel_bind(self, number, ip, port):
        return self.request(CHANNEL_BIND, lambda tid: [(CHANNEL_NUMBER, struct.pack("!HH", number, 0)),
                                                       (XOR_PEER_ADDRESS, xor_address(ip, port, tid))])

    def binding(self):
        data, tid = encode(BINDING, 0, [])
        return self.transact(data, tid)

    def close(self):
        self.sock.close()


class StreamTurnClient(TurnClient):
    """The same client over a connected stream (TCP, or TLS through a wrapper): requests and
    responses are framed by their STUN headers; ChannelData frames in between are skipped."""

    def __init__(self, sock, username=None, password=None):
        self.sock = sock
        self.username, self.password = username, password
        self.realm = self.nonce = None

    def _read_exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def transact(self, data, tid):
        self.sock.sendall(data)
        while True:
            head = self._read_exact(4)
            if head[0] & 0xC0 == 0x40:
                length = struct.unpack("!H", head[2:4])[0]
                self._read_exact((length + 3) & ~3)
                continue
            length = struct.unpack("!H", head[2:4])[0]
            rest = self._read_exact(16 + length)
            r = Response(head + rest)
            if r.tid == tid:
                return r
