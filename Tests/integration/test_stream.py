"""TURN over TCP and TLS, one port for TLS/STUN/HTTP, certificates and their reload, and
backpressure, against the real ferryd with coturn's turnutils_uclient, aioice, openssl s_client
and curl."""
import asyncio
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import time

import pytest

import turnclient as tc
from conftest import UNDER_ASAN, free_port, http_get, turn_base, turn_listeners, wait_until, wait_until_async
from test_turn import run_uclient, peer  # noqa: F401  (the peer fixture)


def make_cert(directory, name):
    cert, key = os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}", "-days", "2",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def stream_config(tcp_port, tls_port, certs, extra_stream="", extra_tls=""):
    cert_tables = "".join(f'[[tls.certificate]]\ncertificate = "{c}"\nkey = "{k}"\n' for c, k in certs)
    return turn_base() + f"""
[tls]
{extra_tls}
{cert_tables}
[stream]
{extra_stream}
{turn_listeners(udp=tcp_port, tcp=tcp_port, tls=tls_port)}"""


@pytest.fixture
def stream_server(ferryd_factory, tmpdir_path):
    def start(extra_stream="", extra_tls="", names=("a.test",)):
        tcp_port, tls_port = free_port(), free_port()
        certs = [make_cert(tmpdir_path, n) for n in names]
        f = ferryd_factory(stream_config(tcp_port, tls_port, certs, extra_stream, extra_tls))
        f.tcp_port, f.tls_port, f.certs = tcp_port, tls_port, certs
        return f
    return start


def s_client(port, *args, data=b""):
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args], input=data,
                       capture_output=True, timeout=20)
    return r.returncode, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def test_uclient_over_tcp_without_loss(stream_server, peer):
    f = stream_server()
    lost, out = run_uclient(["-t", "-p", str(f.tcp_port), "-u", "test", "-w", "pass", "-e", "127.0.0.1", "-r", str(peer),
                             "-n", "200", "-m", "4", "-l", "1200", "-z", "5", "127.0.0.1"])
    assert lost == 0, out[-2000:]
    assert f.metric("ferry_connections_protocol_total", {"protocol": "turn"}) >= 4
    assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_client"}) >= 800


def test_uclient_over_tls_without_loss(stream_server, peer):
    f = stream_server()
    lost, out = run_uclient(["-t", "-S", "-p", str(f.tls_port), "-u", "test", "-w", "pass", "-e", "127.0.0.1", "-r", str(peer),
                             "-n", "200", "-m", "4", "-l", "1200", "-z", "5", "127.0.0.1"])
    assert lost == 0, out[-2000:]
    assert f.metric("ferry_connections_protocol_total", {"protocol": "turns"}) >= 4


def aioice_over_tls(port, payloads=(b"hello",), hold=None):
    from aioice import turn as aioice_turn

    async def scenario():
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        loop = asyncio.get_running_loop()
        received = asyncio.Queue()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                self.transport.sendto(b"echo:" + data, addr)

        peer_transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                received.put_nowait(data)

        transport, _ = await aioice_turn.create_turn_endpoint(Client, server_addr=("127.0.0.1", port), username="test",
                                                               password="pass", ssl=ctx, transport="tcp")
        got = []
        for p in payloads:
            transport.sendto(p, peer_transport.get_extra_info("sockname"))
            got.append(await asyncio.wait_for(received.get(), 5))
        if hold:
            await hold()
            transport.sendto(b"after", peer_transport.get_extra_info("sockname"))
            got.append(await asyncio.wait_for(received.get(), 5))
        transport.close()
        peer_transport.close()
        return got

    return asyncio.run(scenario())


def test_aioice_over_tls_relays(stream_server):
    f = stream_server()
    assert aioice_over_tls(f.tls_port, [b"one", b"two"]) == [b"echo:one", b"echo:two"]
    wait_until(lambda: f.metric("ferry_turn_allocations_active") == 0,
               what=lambda: "the allocation goes when its connection closes")


def test_alpn_certificate_sni_and_old_versions(stream_server):
    f = stream_server(names=("a.test", "b.test"))
    rc, out = s_client(f.tls_port, "-alpn", "stun.turn")
    assert "ALPN protocol: stun.turn" in out and "CN = a.test" in out and "TLSv1.3" in out, out
    rc, out = s_client(f.tls_port, "-alpn", "h2,http/1.1")
    assert "ALPN protocol: http/1.1" in out, out
    rc, out = s_client(f.tls_port, "-servername", "b.test")
    assert "CN = b.test" in out, out
    rc, out = s_client(f.tls_port, "-servername", "unknown.test")
    assert "CN = a.test" in out, "unknown names get the default certificate"
    for old in (["-tls1"], ["-tls1_1"]):
        rc, out = s_client(f.tls_port, *old, "-cipher", "DEFAULT@SECLEVEL=0")
        assert rc != 0 and "Cipher is (NONE)" in out or "alert" in out.lower(), out
    assert f.metric("ferry_tls_handshakes_total", {"result": "failed", "version": "none"}) >= 2
    rc, out = s_client(f.tls_port, "-tls1_2")
    assert "TLSv1.2" in out and rc == 0, out


def test_one_port_serves_stun_tls_and_http(stream_server):
    f = stream_server()
    # Plain TCP: HTTP and STUN by their first bytes; TLS too.
    assert subprocess.run(["curl", "-s", f"http://127.0.0.1:{f.tcp_port}/healthz"], capture_output=True, text=True).stdout == "ok\n"
    assert subprocess.run(["curl", "-sk", f"https://127.0.0.1:{f.tcp_port}/readyz"], capture_output=True, text=True).stdout == "ready\n"
    assert subprocess.run(["curl", "-sk", f"https://127.0.0.1:{f.tls_port}/healthz"], capture_output=True, text=True).stdout == "ok\n"
    with socket.create_connection(("127.0.0.1", f.tcp_port)) as s:
        data, tid = tc.encode(tc.BINDING, 0, [])
        s.sendall(data)
        r = tc.Response(s.recv(1000))
        assert r.ok and r.addresses(tc.XOR_MAPPED_ADDRESS)[0] == s.getsockname()
    for p in ("turn", "http", "https"):
        assert f.metric("ferry_connections_protocol_total", {"protocol": p}) >= 1, p


def test_garbage_and_truncated_tls_records_close_and_are_counted(stream_server):
    f = stream_server(extra_tls="handshake_timeout_seconds = 1")
    rng = __import__("random").Random(3)
    for i in range(30):
        with socket.create_connection(("127.0.0.1", f.tls_port if i % 2 else f.tcp_port), timeout=5) as s:
            junk = b"\x16\x03\x01" + bytes(rng.randrange(256) for _ in range(rng.randint(2, 300)))
            s.sendall(junk)
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass
    # Truncated: the start of a ClientHello, then silence: the handshake timeout closes it.
    with socket.create_connection(("127.0.0.1", f.tls_port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20)
        started = time.time()
        assert s.recv(100) == b""
        assert time.time() - started < 4
    # Every one of the 31 connections was closed by the server and counted, one way or the other.
    errors = f.metric("ferry_connections_closed_total", {"reason": "tls_error"})
    timeouts = f.metric("ferry_connections_closed_total", {"reason": "handshake_timeout"})
    assert timeouts >= 1 and errors >= 15
    wait_until(lambda: f.metric("ferry_connections_closed_total", {"reason": "tls_error"})
               + f.metric("ferry_connections_closed_total", {"reason": "handshake_timeout"}) >= 31, interval=0.2)
    assert http_get(f.admin_port, "/healthz") == (200, "ok\n")
    assert f.proc.poll() is None


def closed_by_server(s):
    """EOF, or a reset when the server closed with our bytes unread: closed either way."""
    try:
        return s.recv(10) == b""
    except ConnectionResetError:
        return True


def test_unknown_first_bytes_and_silence(stream_server):
    f = stream_server(extra_tls="handshake_timeout_seconds = 1")
    with socket.create_connection(("127.0.0.1", f.tcp_port), timeout=5) as s:
        s.sendall(b"\xff\xfe\xfd\xfc")
        assert closed_by_server(s)
    with socket.create_connection(("127.0.0.1", f.tcp_port), timeout=5) as s:
        assert closed_by_server(s), "a silent connection is closed after the handshake timeout"
    assert f.metric("ferry_connections_closed_total", {"reason": "protocol_error"}) >= 1
    assert f.metric("ferry_connections_closed_total", {"reason": "handshake_timeout"}) >= 1


def test_certificate_reload_keeps_established_sessions(stream_server, tmpdir_path):
    f = stream_server()
    rc, out = s_client(f.tls_port)
    assert "CN = a.test" in out

    def reload():
        async def do():
            new_cert, new_key = make_cert(tmpdir_path, "c.test")
            os.replace(new_cert, f.certs[0][0])
            os.replace(new_key, f.certs[0][1])
            f.signal(signal.SIGHUP)
            await wait_until_async(lambda: f.metric("ferry_tls_certificate_reloads_total", {"result": "ok"}) == 1)
            rc, out = s_client(f.tls_port)
            assert "CN = c.test" in out, "new connections see the new certificate"
            # A bad certificate: refused, the old one stays.
            with open(f.certs[0][0], "w") as fh:
                fh.write("not a certificate\n")
            f.signal(signal.SIGHUP)
            await wait_until_async(lambda: f.metric("ferry_tls_certificate_reloads_total", {"result": "failed"}) == 1)
            rc, out = s_client(f.tls_port)
            assert "CN = c.test" in out
        return do()

    got = aioice_over_tls(f.tls_port, [b"before"], hold=reload)
    assert got == [b"echo:before", b"echo:after"], "the established relayed session kept flowing"
    # The whole reload fails (a key that cannot be applied), naming the key; the old certificate stays.
    assert "reload failed; keeping the running configuration" in f.output()
    assert "config problem key=tls.certificate" in f.output()


def test_slow_reader_is_bounded(stream_server):
    """A TCP client that never reads while its peer floods: the server queues up to
    stream.write_buffer_bytes, drops the rest (buffer_full), and does not grow."""
    f = stream_server(extra_stream="write_buffer_bytes = 65536")
    rss0 = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{f.proc.pid}/status").read()).group(1))
    s = socket.create_connection(("127.0.0.1", f.tcp_port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))

    def req(method, make):
        tid = os.urandom(12)
        attrs = make(tid)
        if realm[0]:
            attrs += [(tc.USERNAME, b"test"), (tc.REALM, realm[0].encode()), (tc.NONCE, nonce[0].encode())]
            key = __import__("hashlib").md5(f"test:{realm[0]}:pass".encode()).digest()
        else:
            key = None
        data, _ = tc.encode(method, 0, attrs, tid=tid, key=key)
        s.sendall(data)
        head = s.recv(20, socket.MSG_WAITALL)
        body = s.recv(struct.unpack("!H", head[2:4])[0], socket.MSG_WAITALL)
        return tc.Response(head + body)

    realm, nonce = [None], [None]
    r = req(tc.ALLOCATE, lambda tid: [(tc.REQUESTED_TRANSPORT, struct.pack("!I", 17 << 24))])
    realm[0], nonce[0] = r.attrs[tc.REALM][0].decode(), r.attrs[tc.NONCE][0].decode()
    r = req(tc.ALLOCATE, lambda tid: [(tc.REQUESTED_TRANSPORT, struct.pack("!I", 17 << 24))])
    assert r.ok
    relayed = r.addresses(tc.XOR_RELAYED_ADDRESS)[0]
    r = req(tc.CHANNEL_BIND, lambda tid: [(tc.CHANNEL_NUMBER, struct.pack("!HH", 0x4000, 0)),
                                          (tc.XOR_PEER_ADDRESS, tc.xor_address(*sink.getsockname(), tid))])
    assert r.ok
    payload = b"x" * 1200
    for i in range(40000):   # 48 MB at a client that reads nothing
        sink.sendto(payload, relayed)
        if i % 1000 == 0:
            time.sleep(0.002)
    time.sleep(0.5)
    rss1 = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{f.proc.pid}/status").read()).group(1))
    # Most of the flood is dropped at the full queue; the rest fit the kernel's socket buffers
    # or overflowed the relayed socket's receive buffer before ferryd saw it.
    full = f.metric("ferry_turn_drops_total", {"reason": "buffer_full"})
    delivered = f.metric("ferry_turn_relayed_packets_total", {"direction": "to_client"})
    assert full > 10000 and delivered < 10000, (full, delivered)
    if not UNDER_ASAN:
        assert rss1 - rss0 < 16 * 1024, f"RSS grew by {(rss1 - rss0) / 1024:.1f} MiB"
    s.close()


def test_session_resumption(stream_server, tmpdir_path):
    f = stream_server()
    sess = os.path.join(tmpdir_path, "session")
    # Keep the first connection open a moment so the TLS 1.3 ticket arrives.
    subprocess.run(["sh", "-c", f"(sleep 1; echo) | timeout 2 openssl s_client -connect 127.0.0.1:{f.tls_port} -sess_out {sess} -ign_eof"],
                   capture_output=True, timeout=20)
    assert os.path.getsize(sess) > 0
    rc, out = s_client(f.tls_port, "-sess_in", sess)
    assert "Reused, TLSv1.3" in out, out


def test_handshake_rate_limit_per_source(stream_server):
    f = stream_server(extra_tls="handshakes_per_second = 1\nhandshake_burst = 2")
    outcomes = [s_client(f.tls_port)[1] for _ in range(4)]
    completed = [o for o in outcomes if "Cipher is TLS" in o]
    # Two workers each allow a burst of 2 per source: at least 2 and at most 4 complete.
    refused = f.metric("ferry_connections_closed_total", {"reason": "rate_limited"})
    assert len(completed) + refused == 4
    for _ in range(6):
        s_client(f.tls_port)
    assert f.metric("ferry_connections_closed_total", {"reason": "rate_limited"}) >= 2


def test_client_that_never_reads_its_answers_is_closed(stream_server):
    """Requests whose answers are never read cannot grow the server either: past four times the
    write buffer the connection is closed (slow_reader)."""
    f = stream_server(extra_stream="write_buffer_bytes = 4096")
    s = socket.create_connection(("127.0.0.1", f.tcp_port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    binding, _ = tc.encode(tc.BINDING, 0, [])
    s.settimeout(5)
    try:
        for _ in range(200000):   # ~4 MB of requests, each answered with ~48 bytes
            s.sendall(binding * 10)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    wait_until(lambda: f.metric("ferry_connections_closed_total", {"reason": "slow_reader"}) == 1)
    s.close()


def test_plain_tcp_listener_needs_no_certificate(ferryd_factory):
    port = free_port()
    f = ferryd_factory(f"""
[turn]
relay_ipv4 = "127.0.0.1"
{turn_listeners(tcp=port)}""")
    with socket.create_connection(("127.0.0.1", port)) as s:
        data, tid = tc.encode(tc.BINDING, 0, [])
        s.sendall(data)
        assert tc.Response(s.recv(1000)).ok
    rc, out = s_client(port)
    assert rc != 0, "TLS is refused where no certificate is configured"
    assert f.metric("ferry_connections_closed_total", {"reason": "tls_error"}) == 1


def tls_connect(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="a.test")


def half_close(sock):
    """Sends FIN on the socket under `sock` (a TLS socket too, without close_notify)."""
    with socket.socket(fileno=os.dup(sock.fileno())) as raw:
        raw.shutdown(socket.SHUT_WR)


def test_tls_relay_sends_each_turn_message_in_its_own_record(stream_server):
    """A burst of peer datagrams relayed to a TLS client arrives as one TLS record per
    ChannelData message: turnutils_uclient (and clients written like it) take one SSL_read as one
    message, so several messages in one record lost all but the first (the issue-8 flake of
    test_uclient_over_tls_without_loss). Python's SSLSocket.recv returns at most one record."""
    f = stream_server()
    tls = tls_connect(f.tls_port)
    tls.settimeout(5)
    c = tc.StreamTurnClient(tls, "test", "pass")
    r = c.allocate()
    assert r.ok, r.code
    relayed = r.addresses(tc.XOR_RELAYED_ADDRESS)[0]
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    assert c.channel_bind(0x4000, *sink.getsockname()).ok
    burst = 64
    for i in range(burst):
        sink.sendto(struct.pack("!I", i) + b"w" * 196, relayed)   # one recvmmsg batch, one flush
    seen = []
    while len(seen) < burst:
        record = tls.recv(65536)
        assert record, "closed"
        channel, length = struct.unpack("!HH", record[:4])
        assert channel == 0x4000 and len(record) == 4 + ((length + 3) & ~3), \
            f"record {len(seen)} holds {len(record)} bytes: more than one message"
        seen.append(struct.unpack("!I", record[4:8])[0])
    assert seen == list(range(burst))
    tls.close()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_answer_to_a_request_sent_with_the_clients_fin_is_delivered(stream_server, transport):
    """A client's last request and its end of input in one read: the answer still leaves, then
    the connection closes as the client's (a TLS client that sends no close_notify, as Chromium
    does, is not a TLS error)."""
    f = stream_server()
    rounds = 20
    for _ in range(rounds):
        if transport == "tls":
            sock = tls_connect(f.tls_port)
        else:
            sock = socket.create_connection(("127.0.0.1", f.tcp_port))
        sock.settimeout(5)
        data, tid = tc.encode(tc.BINDING, 0, [])
        sock.sendall(data)
        half_close(sock)     # FIN right behind the request, no close_notify
        answer = b""
        try:
            while len(answer) < 20:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except (ssl.SSLError, ConnectionResetError) as e:
            pytest.fail(f"no answer before the close: {e}")
        assert len(answer) >= 20 and tc.Response(answer).tid == tid
        sock.close()
    wait_until(lambda: f.metric("ferry_connections_closed_total", {"reason": "client"}) >= rounds,
               what=lambda: f.metric("ferry_connections_closed_total", {"reason": "client"}))
    assert f.metric("ferry_connections_closed_total", {"reason": "tls_error"}) == 0
