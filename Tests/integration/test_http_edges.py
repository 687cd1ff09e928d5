"""HTTP and WebSocket edges a hostile client tries, on the admin port and on the stream
listeners, with raw sockets: ambiguous framing (RFC 9112 §6.3), bad WebSocket keys and versions
(RFC 6455 §4.2), heads sent a byte at a time, and one address holding many connections."""
import base64
import os
import socket
import time

import pytest

from conftest import free_port, wait_until
from test_admin import raw_request
from test_signal import signal_server  # noqa: F401  (the fixture)
from test_stream import stream_server  # noqa: F401  (the fixture)

SMUGGLE = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n"
           b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
TE_AND_CL = b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"


def statuses(answer):
    return [line.split(b" ")[1] for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


@pytest.mark.parametrize("port_of", ["admin", "stream"])
def test_ambiguous_request_framing_is_refused_and_closed(stream_server, port_of):
    f = stream_server()
    port = f.admin_port if port_of == "admin" else f.tcp_port
    malformed = "ferry_admin_malformed_requests_total" if port_of == "admin" else "ferry_https_malformed_requests_total"
    for request in (SMUGGLE, TE_AND_CL, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n"):
        answer = raw_request(port, request)
        assert statuses(answer) == [b"400"], answer      # one answer: the "body" is never a request
        assert b"Connection: close" in answer
    assert f.metric(malformed) == 3


def upgrade(port, key, version="13"):
    head = (f"GET /v1/signal HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n").encode()
    return raw_request(port, head)


def test_websocket_key_must_be_16_bytes_and_version_13_is_named(signal_server):
    f = signal_server(extra="allow_plaintext = true")
    good = base64.b64encode(os.urandom(16)).decode()
    assert upgrade(f.tcp_port, good).startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    for bad in ("x" * 24, base64.b64encode(os.urandom(17)).decode()[:24], good[:21] + "B==", good[:22] + "=A"):
        answer = upgrade(f.tcp_port, bad)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (bad, answer)
    answer = upgrade(f.tcp_port, good, version="8")
    assert answer.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"), answer
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer
    f2 = signal_server()
    assert upgrade(f2.tcp_port, good).startswith(b"HTTP/1.1 403 Forbidden\r\n")


def test_http_head_trickled_a_byte_at_a_time_gets_408(stream_server):
    """The head of a request on a stream listener must be complete request_timeout_seconds after
    its first byte, however steadily its bytes come (each byte used to reset the idle timeout)."""
    f = stream_server(extra_stream="request_timeout_seconds = 2\nidle_timeout_seconds = 10", extra_tls="handshake_timeout_seconds = 3")
    s = socket.create_connection(("127.0.0.1", f.tcp_port))
    s.settimeout(0.2)
    started = time.time()
    answer = b""
    for c in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
        try:
            s.send(bytes([c]))
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        except socket.timeout:
            pass
        time.sleep(0.3)
    took = time.time() - started
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
    assert 2 <= took < 5, took
    # After the 408 the server shut its side and discards what still comes (a lingering close);
    # the connection ends, counted with its reason, when the client closes too.
    s.close()
    wait_until(lambda: f.metric("ferry_connections_closed_total", {"reason": "request_timeout"}) == 1)


def test_one_source_cannot_hold_every_connection(stream_server):
    """stream.max_connections_per_source bounds what one address holds on each worker; another
    address still gets in."""
    f = stream_server(extra_stream="max_connections_per_source = 3")
    held = []
    for _ in range(16):
        s = socket.create_connection(("127.0.0.1", f.tcp_port))
        held.append(s)
    time.sleep(0.3)
    refused = f.metric("ferry_connections_closed_total", {"reason": "source_limit"})
    active = f.metric("ferry_connections_active", {"transport": "tcp"})
    assert active <= 6 and refused == 16 - active, (active, refused)   # 2 workers x 3
    other = socket.socket()
    other.bind(("127.0.0.2", 0))
    other.connect(("127.0.0.1", f.tcp_port))
    other.settimeout(3)
    other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert other.recv(4096).startswith(b"HTTP/1.1 200 OK")
    for s in held + [other]:
        s.close()
