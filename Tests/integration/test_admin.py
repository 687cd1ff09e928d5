"""The admin endpoint over real sockets: curl for the well-formed requests, raw sockets for
the malformed ones."""
import socket
import subprocess

from conftest import free_port, http_get, wait_until


def curl(*args):
    r = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code} %{content_type}", *args],
                       capture_output=True, text=True, timeout=10)
    body, _, tail = r.stdout.rpartition("\n")
    code, _, ctype = tail.partition(" ")
    return int(code), ctype, body


def raw_request(port, data, timeout=3):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
        except socket.timeout:
            pass
        return b"".join(chunks)


def test_health_ready_and_metrics_with_curl(ferryd_factory):
    f = ferryd_factory("")
    code, _, body = curl(f"http://127.0.0.1:{f.admin_port}/healthz")
    assert (code, body) == (200, "ok\n")
    code, _, body = curl(f"http://127.0.0.1:{f.admin_port}/readyz")
    assert (code, body) == (200, "ready\n")
    code, ctype, body = curl(f"http://127.0.0.1:{f.admin_port}/metrics")
    assert code == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    assert 'ferry_build_info{version="' in body
    assert "ferry_ready 1" in body
    assert "# TYPE ferry_admin_requests_total counter" in body
    code, _, _ = curl(f"http://127.0.0.1:{f.admin_port}/nope")
    assert code == 404
    code, _, _ = curl("-X", "POST", "-d", "x", f"http://127.0.0.1:{f.admin_port}/metrics")
    assert code == 405
    r = subprocess.run(["curl", "-sS", "-I", f"http://127.0.0.1:{f.admin_port}/healthz"], capture_output=True, text=True)
    assert r.stdout.startswith("HTTP/1.1 200 OK") and "Content-Length: 3" in r.stdout
    # The requests above were counted by status.
    assert f.metric("ferry_admin_requests_total", {"code": "404"}) == 1
    assert f.metric("ferry_admin_requests_total", {"code": "405"}) == 1


def test_keep_alive_serves_several_requests_on_one_connection(ferryd_factory):
    f = ferryd_factory("")
    req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = raw_request(f.admin_port, req)
    assert reply.count(b"HTTP/1.1 200 OK") == 4


def test_malformed_requests_get_400_and_server_stays_up(ferryd_factory):
    f = ferryd_factory("")
    bad = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",                       # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",  # obsolete folding
        b"GET / HTTP/1.1\nHost: a\n\n",                  # bare LF
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # a TLS hello
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
    ]
    for data in bad:
        reply = raw_request(f.admin_port, data)
        assert reply.startswith(b"HTTP/1.1 400 Bad Request"), (data, reply)
        assert b"Connection: close" in reply
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 10000 + b"\r\n\r\n"
    assert raw_request(f.admin_port, big).startswith(b"HTTP/1.1 431")
    assert raw_request(f.admin_port, b"GET / HTTP/3.0\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 505")
    assert http_get(f.admin_port, "/healthz") == (200, "ok\n")
    assert f.metric("ferry_admin_malformed_requests_total") == len(bad) + 2
    assert f.proc.poll() is None


def test_incomplete_request_times_out_with_408(ferryd_factory):
    port = free_port()
    ferryd_factory(f'[admin]\naddress = "127.0.0.1:{port}"\nrequest_timeout_seconds = 1\n', admin_port=port)
    reply = raw_request(port, b"GET / HTTP/1.1\r\nHost:", timeout=5)
    assert reply.startswith(b"HTTP/1.1 408")


def test_connection_limit_is_enforced_and_counted(ferryd_factory):
    port = free_port()
    f = ferryd_factory(f'[admin]\naddress = "127.0.0.1:{port}"\nmax_connections = 2\n', admin_port=port)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        extra = socket.create_connection(("127.0.0.1", port), timeout=3)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert extra.recv(100) == b""  # closed at once (EOF) ...
        except ConnectionResetError:
            pass  # ... or reset, when our request was still unread
        extra.close()
    finally:
        for s in held:
            s.close()
    # Once the held connections are gone, the admin endpoint serves again.
    wait_until(lambda: f.metric("ferry_admin_refused_connections_total") >= 1, ignore=(ConnectionResetError,))
