"""The session log: one `ferryd.session` line when a TURN allocation or a signaling session
ends, with who, from where, how long, bytes and packets each way and why it ended, as JSON with
`log.format = "json"` (counts as JSON numbers) and as key=value text otherwise. Expiry is the
one way of ending that takes a minute here; the unit tests cover it (SessionRecordTests)."""
import asyncio
import json
import signal
import socket
import struct
import time

import turnclient as tc
from conftest import free_port, listener, turn_base, wait_until
from test_signal import connect, run, signal_server  # noqa: F401 (a fixture)

REST_SECRET = "session-rest-secret-0123456789"


def session_lines(f):
    out = []
    for line in f.output().splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            if d.get("logger") == "ferryd.session":
                out.append(d)
    return out


def rest_credentials(user, ttl=600):
    return tc.rest_credentials(REST_SECRET, user, int(time.time()) + ttl)


def test_allocation_lines_for_each_way_an_allocation_ends(ferryd_factory):
    udp, tcp = free_port(socket.SOCK_DGRAM), free_port()
    config = turn_base(workers=1, drain=1).replace('relay_ipv4 = "127.0.0.1"\n', f'relay_ipv4 = "127.0.0.1"\nstatic_auth_secrets = ["{REST_SECRET}"]\n')
    f = ferryd_factory('[log]\nformat = "json"\n' + config + listener("turn-udp", udp) + listener("turn-tcp", tcp, "tcp"))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2)

    # 1. Deleted by the client, after traffic both ways through a channel.
    c = tc.TurnClient(("127.0.0.1", udp), "test", "pass")
    r = c.allocate()
    assert r.ok, r.code
    relay = tuple(r.addresses(tc.XOR_RELAYED_ADDRESS)[0])
    assert c.channel_bind(0x4001, "127.0.0.1", peer.getsockname()[1]).ok
    for _ in range(3):
        c.send_raw(struct.pack("!HH", 0x4001, 100) + b"x" * 100)
        peer.recvfrom(2048)
    for _ in range(2):
        peer.sendto(b"y" * 50, relay)
        c.sock.recv(2048)
    assert c.refresh(0).ok
    line = wait_until(lambda: next((l for l in session_lines(f) if l["reason"] == "client_deleted"), None))
    assert line["msg"] == "allocation ended" and line["kind"] == "turn"
    assert line["user"] == "test" and line["username"] == "test"
    assert line["client"] == f"127.0.0.1:{c.sock.getsockname()[1]}" and line["transport"] == "udp"
    assert line["relayed"] == f"{relay[0]}:{relay[1]}"
    assert (line["packets_from_client"], line["bytes_from_client"]) == (3, 300)
    assert (line["packets_to_client"], line["bytes_to_client"]) == (2, 100)
    assert isinstance(line["duration_seconds"], int) and 0 <= line["duration_seconds"] < 30
    started = time.mktime(time.strptime(line["started"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(started - time.time()) < 60, line["started"]

    # 2. Its TCP connection closed.
    s = socket.create_connection(("127.0.0.1", tcp), timeout=3)
    t = tc.StreamTurnClient(s, "test", "pass")
    assert t.allocate().ok
    client = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()
    line = wait_until(lambda: next((l for l in session_lines(f) if l["reason"] == "connection_closed"), None))
    assert line["transport"] == "tcp" and line["client"] == client

    # 3. ferryd stopped while it lived (TURN REST credentials: the user is after the expiry).
    username, password = rest_credentials("alice")
    rest = tc.TurnClient(("127.0.0.1", udp), username, password)
    assert rest.allocate().ok
    f.signal(signal.SIGTERM)
    assert f.proc.wait(10) == 0
    line = next(l for l in session_lines(f) if l["reason"] == "shutdown")
    assert line["user"] == "alice" and line["username"] == username
    assert len(session_lines(f)) == 3


def test_signaling_lines_for_each_way_a_session_ends(signal_server):
    g = signal_server('\n[log]\nformat = "json"\n')
    url = g.url

    async def go():
        a = await connect(url)
        b = await connect(url)
        # a → b: one offer; b answers.
        await a.send(type="offer", to=b.key, payload="o" * 100)
        assert (await b.recv())["type"] == "offer"
        await a.ws.close()
        first = wait_until(lambda: next((l for l in session_lines(g) if l.get("peer") == a.key), None))
        assert first["reason"] == "client_closed" and first["kind"] == "signal" and first["network"] == "net-a"
        assert first["transport"] == "wss" and first["messages_from_client"] == 2  # auth and the offer
        assert first["bytes_from_client"] > 100 and first["messages_to_client"] >= 2  # hello, welcome
        # A second connection with b's key replaces b.
        await connect(url, priv=b.priv)
        replaced = wait_until(lambda: next((l for l in session_lines(g) if l.get("peer") == b.key), None))
        assert replaced["reason"] == "replaced"
        assert replaced["messages_to_client"] >= 3  # hello, welcome, the offer
    run(go())

    async def drained():
        c = await connect(url)
        g.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(c.ws.recv(), 5)
            await asyncio.wait_for(c.ws.recv(), 5)
        except Exception:
            pass
        return c.key
    key = run(drained())
    assert g.proc.wait(10) == 0
    line = next(l for l in session_lines(g) if l.get("peer") == key)
    assert line["reason"] == "draining"


def test_text_lines_and_turning_the_log_off(ferryd_factory, tmpdir_path):
    for sessions in (True, False):
        udp = free_port(socket.SOCK_DGRAM)
        f = ferryd_factory(("" if sessions else "[log]\nsessions = false\n") + turn_base(workers=1) + listener("turn-udp", udp))
        c = tc.TurnClient(("127.0.0.1", udp), "test", "pass")
        assert c.allocate().ok and c.refresh(0).ok
        # The refresh was answered after the line was written, on the same worker.
        lines = [l for l in f.output().splitlines() if "ferryd.session" in l]
        if sessions:
            assert len(lines) == 1 and " info ferryd.session: allocation ended " in lines[0], lines
            assert "reason=client_deleted" in lines[0] and "bytes_from_client=0" in lines[0] and "user=test" in lines[0]
        else:
            assert lines == []
        f.stop()


def logfmt(text):
    """Parses `key=value key="quoted \\"value\\""` (logfmt, JSON escapes in quotes)."""
    fields, i = {}, 0
    while i < len(text):
        while i < len(text) and text[i] == " ":
            i += 1
        eq = text.index("=", i)
        key, i = text[i:eq], eq + 1
        if i < len(text) and text[i] == '"':
            value, i = json.JSONDecoder().raw_decode(text, i)
        else:
            end = text.find(" ", i)
            end = len(text) if end < 0 else end
            value, i = text[i:end], end
        fields[key] = value
    return fields


def test_client_values_cannot_forge_fields_or_lines_in_the_text_log(ferryd_factory):
    """A TURN REST username is the client's to choose: with a newline, quotes, spaces and
    key=value text in it, the text line stays one line and parses back to the same fields."""
    udp = free_port(socket.SOCK_DGRAM)
    config = turn_base(workers=1).replace('relay_ipv4 = "127.0.0.1"\n', f'relay_ipv4 = "127.0.0.1"\nstatic_auth_secrets = ["{REST_SECRET}"]\n')
    f = ferryd_factory(config + listener("turn-udp", udp))
    forged = ('mallory reason=client_deleted\n2026-01-01T00:00:00Z info ferryd.session: allocation ended '
              'bytes_from_client=999999 user=victim "quoted" back\\slash')
    username, password = rest_credentials(forged)
    c = tc.TurnClient(("127.0.0.1", udp), username, password)
    assert c.allocate().ok and c.refresh(0).ok
    lines = [l for l in f.output().splitlines() if "ferryd.session" in l]
    assert len(lines) == 1, lines
    head, rest = lines[0].split(" info ferryd.session: allocation ended ", 1)
    fields = logfmt(rest)
    assert fields["username"] == username, fields
    assert fields["user"] == forged and fields["reason"] == "client_deleted" and fields["bytes_from_client"] == "0", fields
    assert "victim" not in [v for k, v in fields.items() if k != "user" and k != "username"]
    c.close()
