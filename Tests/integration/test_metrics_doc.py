"""docs/metrics.md and /metrics agree both ways, on a server with every kind of listener: each
documented family is exported with its documented type, each exported family is documented, and
each per-listener family has a series for every listener it applies to."""
import os
import re
import socket

from conftest import ROOT, free_port, http_get, listener, nats_env, turn_listeners
from test_stream import make_cert

DOC = os.path.join(ROOT, "docs", "metrics.md")


def documented():
    rows = {}
    for line in open(DOC):
        m = re.match(r"\| `(ferry_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def exported(port):
    _, body = http_get(port, "/metrics")
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", body, re.M))
    return types, body


def test_every_documented_series_exists_on_every_listener(ferryd_factory, tmpdir_path):
    udp, fwd, tcp, tls, sink, native = free_port(), free_port(), free_port(), free_port(), free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    cert, key = make_cert(tmpdir_path, "a.test")
    f = ferryd_factory(f"""
[server]
workers = 2
[engine]
max_datagram = 600
# The XDP program on loopback (generic mode): its series exist only where it is loaded.
xdp = "generic"
xdp_interfaces = ["lo"]
[turn]
relay_ipv4 = "127.0.0.1"
static_auth_secrets = ["metrics-doc-secret-0123"]
[[turn.user]]
name = "test"
password = "pass"
[[tls.certificate]]
certificate = "{cert}"
key = "{key}"
[signal]
enabled = true
token_secrets = ["signal-secret-0123456789"]
[signal.nats]
servers = ["nats://127.0.0.1:{free_port()}"]
{turn_listeners(udp=udp, tcp=tcp, tls=tls)}
{listener("fwd-udp", fwd, service="forward", forward_to=sink)}
{listener("relay-udp", native, service="relay")}""", env=nats_env())
    # Something on each UDP listener, and one datagram over engine.max_datagram on the TURN one.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12), ("127.0.0.1", udp))
        s.sendto(b"x" * 100, ("127.0.0.1", fwd))
        s.sendto(b"\x40\x00\x03\xe8" + b"y" * 1000, ("127.0.0.1", udp))
    docs = documented()
    types, body = exported(f.admin_port)
    ours = {name: kind for name, kind in types.items() if name.startswith("ferry_")}
    assert sorted(set(docs) - set(ours)) == [], "documented but not exported"
    assert sorted(set(ours) - set(docs)) == [], "exported but not documented in docs/metrics.md"
    assert {n: k for n, k in ours.items() if docs[n] != k} == {}, "types differ from the docs"
    for family in [n for n in docs if n.startswith("ferry_udp_")]:
        for name in ("turn-udp", "fwd-udp"):
            assert re.search(rf'^{family}(_bucket|_count|_sum)?{{[^}}]*listener="{name}"', body, re.M), (family, name)
    truncated = f.metric("ferry_udp_drops_total", {"listener": "turn-udp", "reason": "truncated"})
    assert truncated == 1, "a datagram over engine.max_datagram counts as truncated on its listener"
    assert f.metric("ferry_turn_drops_total", {"reason": "malformed"}) == 0
    assert f.metric("ferry_udp_datagrams_received_total", {"listener": "turn-udp"}) == 2
    assert f.metric("ferry_udp_datagrams_sent_total", {"listener": "turn-udp"}) == 1   # the Binding answer
