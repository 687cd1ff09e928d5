"""The admin port as an attacker and an operator would meet it: a client without the token
pipelining thousands of requests, holding connections, or asking for a drain twice; a token
rotation that cannot be applied; what the open status view shows."""
import json
import os
import socket
import ssl
import threading
import time

import turnclient as tc
from conftest import UNDER_ASAN, Ferryd, NotifySocket, free_port, http_get, listener, turn_base, wait_until
from test_admin_api import TOKEN, curl
from test_stream import make_cert


def healthz_latency(port, host="127.0.0.1"):
    start = time.monotonic()
    status, _ = http_get(port, "/healthz", timeout=10, host=host)
    assert status == 200
    return time.monotonic() - start


def test_a_pipelined_flood_without_the_token_cannot_stall_the_control_thread(tmpdir_path):
    """14,000 pipelined `HEAD /` (392 KB) on one connection that never reads: /healthz on another
    connection stays prompt and the watchdog keeps being fed (before: 31.9 s of /healthz and 50 s
    without WATCHDOG=1)."""
    notify = NotifySocket(tmpdir_path)
    udp = free_port(socket.SOCK_DGRAM)
    f = Ferryd(turn_base(workers=1) + listener("turn-udp", udp), tmpdir_path,
               env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"})
    try:
        assert notify.wait_for("WATCHDOG=1")
        flood = socket.create_connection(("127.0.0.1", f.admin_port))
        request = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
        sender = threading.Thread(target=lambda: flood.sendall(request * 14000), daemon=True)
        sender.start()
        time.sleep(0.2)
        notify.messages.clear()
        latencies = []
        for _ in range(20):
            latencies.append(healthz_latency(f.admin_port))
            time.sleep(0.1)
        worst = max(latencies)
        # 3 s of the flood: the watchdog (every 1 s here) was fed throughout.
        time.sleep(1)
        notify.wait_for("no such message", timeout=0.5)
        pings = sum(m.count("WATCHDOG=1") for m in notify.messages)
        assert worst < (1.5 if UNDER_ASAN else 0.5), f"/healthz took {worst:.3f} s during the flood"
        assert pings >= 2, notify.messages
        assert "missed its watchdog ping" not in f.output() and "was late for the watchdog" not in f.output(), f.output()[-2000:]
        flood.close()
    finally:
        f.stop()
        notify.close()


def test_one_source_cannot_hold_every_admin_connection(ferryd_factory):
    port = free_port()
    f = ferryd_factory(f'[admin]\naddress = "127.0.0.1:{port}"\nmax_connections = 16\nmax_connections_per_source = 4\n'
                       + turn_base(workers=1) + listener("turn-udp", free_port(socket.SOCK_DGRAM)), admin_port=port)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    time.sleep(0.3)
    # A fifth from the same address is closed at once; another address still gets in.
    fifth = socket.create_connection(("127.0.0.1", port))
    fifth.settimeout(3)
    fifth.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        answer = fifth.recv(4096)
    except ConnectionResetError:
        answer = b""
    assert answer == b"", answer
    other = socket.socket()
    other.bind(("127.0.0.2", 0))
    other.settimeout(3)
    other.connect(("127.0.0.1", port))
    other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert other.recv(4096).startswith(b"HTTP/1.1 200 OK")
    for s in held + [fifth, other]:
        s.close()
    wait_until(lambda: f.metric("ferry_admin_refused_connections_total") >= 1, ignore=(OSError,))


def test_a_token_rotation_that_cannot_be_applied_fails_the_reload(ferryd_factory, tmpdir_path):
    port = free_port()
    token_file = os.path.join(tmpdir_path, "admin.token")
    with open(token_file, "w") as fh:
        fh.write(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    f = ferryd_factory(f'[admin]\naddress = "127.0.0.1:{port}"\ntoken_file = "{token_file}"\n'
                       + turn_base(workers=1) + listener("turn-udp", free_port(socket.SOCK_DGRAM)), admin_port=port)
    assert "may be read by others" not in f.output()
    for broken in ("gone", "short"):
        if broken == "gone":
            os.remove(token_file)
        else:
            with open(token_file, "w") as fh:
                fh.write("too-short\n")
        code, body = curl(port, "/v1/reload", "POST", token=TOKEN)
        assert code == 422 and body["result"] == "failed", (broken, code, body)
        assert f.metric("ferry_config_last_reload_successful") == 0
        # The token in use stays (documented): the operator learns the revocation did not happen.
        assert curl(port, "/v1/allocations", token=TOKEN)[0] == 200
    assert f.metric("ferry_reloads_total", {"result": "failed"}) == 2
    assert "config problem" in f.output() and "admin.token_file" in f.output()
    # A good new token applies: the old one is refused from then on.
    new = "rotated-admin-token-0123456789"
    with open(token_file, "w") as fh:
        fh.write(new + "\n")
    os.chmod(token_file, 0o644)
    code, body = curl(port, "/v1/reload", "POST", token=TOKEN)
    assert code == 200 and body["result"] == "ok", body
    assert f.metric("ferry_config_last_reload_successful") == 1
    assert curl(port, "/v1/allocations", token=TOKEN)[0] == 401
    assert curl(port, "/v1/allocations", token=new)[0] == 200
    assert "may be read by others" in f.output(), "a token file others can read is warned about"


def test_two_drains_are_one_drain(ferryd_factory):
    """Two POST /v1/drain, pipelined on one connection and in parallel: both 202, and ferryd
    drains (its allocation is not ended at once with reason=shutdown) instead of stopping."""
    port, udp = free_port(), free_port(socket.SOCK_DGRAM)
    f = ferryd_factory(f'[admin]\naddress = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n' + turn_base(workers=1, drain=3)
                       + listener("turn-udp", udp), admin_port=port)
    c = tc.TurnClient(("127.0.0.1", udp), "test", "pass")
    assert c.allocate().ok
    s = socket.create_connection(("127.0.0.1", port))
    drain = f"POST /v1/drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n".encode()
    s.sendall(drain * 2)
    results = []
    t = threading.Thread(target=lambda: results.append(curl(port, "/v1/drain", "POST", token=TOKEN)[0]))
    t.start()
    s.settimeout(5)
    got = b""
    while got.count(b"HTTP/1.1 ") < 2:
        got += s.recv(4096)
    t.join()
    assert got.count(b"HTTP/1.1 202 Accepted") == 2, got
    assert results == [202], results
    time.sleep(1)
    assert f.proc.poll() is None, "a second drain request must not stop ferryd at once"
    assert "stopping now" not in f.output()
    # The drain ends when the allocation does (or at drain_seconds).
    assert c.refresh(0).ok
    f.proc.wait(10)
    assert "reason=shutdown" not in f.output()
    s.close()


def test_the_open_status_view_carries_no_certificate_names_or_files(ferryd_factory, tmpdir_path):
    cert, key = make_cert(tmpdir_path, "relay.hidden.test")
    port, tls = free_port(), free_port()
    f = ferryd_factory(f'[admin]\naddress = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n' + turn_base(workers=1)
                       + f'[tls]\n[[tls.certificate]]\ncertificate = "{cert}"\nkey = "{key}"\n' + listener("turn-tls", tls, "tls"),
                       admin_port=port)
    _, open_view = http_get(port, "/v1/status")
    _, page = http_get(port, "/")
    for text in (open_view, page):
        assert "relay.hidden.test" not in text and cert not in text
    assert json.loads(open_view)["certificates"][0]["days_left"] >= 0
    detailed = curl(port, "/v1/status", token=TOKEN)[1]
    assert detailed["certificates"][0]["names"] == ["relay.hidden.test"] and detailed["certificates"][0]["source"] == cert
    # Reason phrases on the admin API's statuses.
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(b"POST /v1/drain HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert raw.recv(4096).startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    raw.close()
