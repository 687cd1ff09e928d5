"""`ferry config check` and ferryd's start share one preflight (FerryPreflight): what the check
passes, ferryd serves; what ferryd refuses, the check names by key first. And a relayed socket
that cannot be opened at run time is counted and logged with its reason, never a silent 508."""
import json
import os
import socket
import subprocess

import turnclient as tc
from conftest import binary, free_port, http_get, listener, wait_until
from netns import namespaces, veth  # noqa: F401  (namespaces is a fixture)
from test_stream import make_cert

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def check(path, *flags):
    r = subprocess.run([binary("ferry"), "config", "check", *flags, path], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout, r.stderr


def start_ferryd(path):
    """ferryd that is expected to refuse: its exit code and output."""
    r = subprocess.run([binary("ferryd"), "--config", path], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr


def write(tmp, name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as fh:
        fh.write(text)
    return path


def test_the_shipped_file_is_refused_with_every_placeholder_named():
    shipped = os.path.join(ROOT, "deploy", "ferry.toml")
    for flags in ((), ("--no-host",)):
        rc, out, err = check(shipped, *flags)
        assert rc == 1 and "OK" not in out, (flags, out, err)
        assert "turn.static_auth_secrets: is a placeholder" in err, err
        assert "turn.relay_ipv4: 203.0.113.10 is a documentation address" in err, err
        assert 'turn.realm: "relay.example.org" is an example name' in err, err
    rc, out, err = check(shipped)
    assert "tls.certificate: cannot read /etc/ferry/tls/fullchain.pem" in err, err
    assert "turn.relay_ipv4: 203.0.113.10 cannot be bound on this host" in err, err


def test_a_lab_file_accepts_documentation_values_but_never_a_placeholder_secret(tmpdir_path):
    text = f"""
[server]
lab = true
[turn]
realm = "lab.example.org"
relay_ipv4 = "127.0.0.1"
external_ipv4 = "198.51.100.7"
static_auth_secrets = ["a-real-secret-0123456789abcdef"]
{listener("turn-udp", free_port())}"""
    rc, out, err = check(write(tmpdir_path, "lab.toml", text))
    assert rc == 0 and "OK" in out, out + err
    rc, out, err = check(write(tmpdir_path, "lab2.toml", text.replace("a-real-secret-0123456789abcdef", "replace-with-your-secret")))
    assert rc == 1 and "turn.static_auth_secrets: is a placeholder" in err, err
    # ferryd refuses the placeholder secret too, lab or not.
    rc, out = start_ferryd(os.path.join(tmpdir_path, "lab2.toml"))
    assert rc == 1 and "turn.static_auth_secrets: is a placeholder" in out, out


def udp_config(server="", relay="127.0.0.1", head=""):
    """A one-listener TURN config (its [server] lines and relay address given)."""
    return f"""{head}
[server]
{server}
[turn]
realm = "ferry.test"
relay_ipv4 = "{relay}"
[[turn.user]]
name = "test"
password = "pass"
{listener("turn-udp", free_port())}"""


def tls_config(tls, cert, key, admin):
    return udp_config(head=f'[admin]\naddress = "127.0.0.1:{admin}"') + f"""
[tls]
[[tls.certificate]]
certificate = "{cert}"
key = "{key}"
{listener("turn-tls", tls, "tls")}"""


def critical_line(out):
    lines = [l for l in out.splitlines() if " critical " in l]
    assert len(lines) == 1, out
    return lines[0]


def test_missing_and_mismatched_certificates_are_refused_by_check_and_ferryd_alike(tmpdir_path):
    a_cert, a_key = make_cert(tmpdir_path, "a.test")
    b_cert, b_key = make_cert(tmpdir_path, "b.test")
    cases = {
        "missing": (os.path.join(tmpdir_path, "gone.pem"), a_key),
        "mismatched": (a_cert, b_key),
    }
    for name, (cert, key) in cases.items():
        path = write(tmpdir_path, f"{name}.toml", tls_config(free_port(), cert, key, free_port()))
        rc, out, err = check(path)
        assert rc == 1, (name, out, err)
        problem = [l for l in err.splitlines() if "tls.certificate:" in l]
        assert len(problem) == 1, (name, err)
        words = problem[0].split("tls.certificate: ", 1)[1]
        rc, out = start_ferryd(path)
        assert rc == 1, (name, out)
        assert f"tls.certificate: {words}" in critical_line(out), (name, words, out)
    # The good pair passes, with its names and days left reported.
    path = write(tmpdir_path, "good.toml", tls_config(free_port(), a_cert, a_key, free_port()))
    rc, out, err = check(path)
    assert rc == 0, out + err
    assert f"certificate {a_cert}: a.test; 1 days left" in out or f"certificate {a_cert}: a.test; 2 days left" in out, out


def test_a_relay_address_this_host_does_not_have_is_refused_at_start(tmpdir_path):
    path = write(tmpdir_path, "nonlocal.toml", udp_config(server="lab = true", relay="192.0.2.77"))
    rc, out, err = check(path)
    assert rc == 1 and "turn.relay_ipv4: 192.0.2.77 cannot be bound on this host" in err, err
    assert "turn.external_ipv4" in err, "the error says what to do behind 1:1 NAT"
    # --no-host skips what depends on this machine (a file for another host).
    rc, out, err = check(path, "--no-host")
    assert rc == 0, out + err
    rc, out = start_ferryd(path)
    assert rc == 1, out
    line = critical_line(out)
    assert "turn.relay_ipv4: 192.0.2.77 cannot be bound on this host" in line, line
    assert "ferryd ready" not in out


def test_a_state_directory_that_cannot_be_used_is_refused(tmpdir_path):
    not_dir = write(tmpdir_path, "a-file", "x")
    path = write(tmpdir_path, "state.toml", udp_config(server=f'state_directory = "{not_dir}"'))
    rc, out, err = check(path)
    assert rc == 1 and f"server.state_directory: {not_dir} is not a directory" in err, err
    rc, out = start_ferryd(path)
    assert rc == 1 and f"server.state_directory: {not_dir} is not a directory" in critical_line(out), out


def failures(f, reason):
    return f.metric("ferry_turn_allocations_failed_total", {"reason": reason}) or 0


def test_an_exhausted_port_range_is_counted_logged_and_shown(ferryd_factory):
    udp = free_port()
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    f = ferryd_factory(f"""
[server]
workers = 1
# The allocation left at the end is not the test's subject: no drain when it stops.
drain_seconds = 0
[turn]
realm = "ferry.test"
relay_ipv4 = "127.0.0.1"
port_min = {port}
port_max = {port}
[[turn.user]]
name = "test"
password = "pass"
{listener("turn-udp", udp)}""")
    c = tc.TurnClient(("127.0.0.1", udp), "test", "pass")
    r = c.allocate()
    assert r.code == 508
    assert failures(f, "ports_exhausted") == 1
    wait_until(lambda: "cannot open a relayed socket" in f.output(), what=f.output)
    line = next(l for l in f.output().splitlines() if "cannot open a relayed socket" in l)
    assert "reason=ports_exhausted" in line and f"ports={port}-{port}" in line, line
    # Rate-limited: a second failure is counted, not logged again.
    c2 = tc.TurnClient(("127.0.0.1", udp), "test", "pass")
    assert c2.allocate().code == 508
    assert failures(f, "ports_exhausted") == 2
    assert f.output().count("cannot open a relayed socket") == 1
    status, body = http_get(f.admin_port, "/v1/status")
    assert json.loads(body)["allocations"]["failed_by_reason"] == {"ports_exhausted": 2}
    status, page = http_get(f.admin_port, "/")
    assert "Allocations refused (508) by reason" in page and "ports_exhausted" in page
    # The port comes free: allocations work again.
    taken.close()
    c3 = tc.TurnClient(("127.0.0.1", udp), "test", "pass")
    assert c3.allocate().ok
    for x in (c, c2, c3):
        x.close()


def test_a_relay_address_removed_while_running_is_counted_with_its_reason(ferryd_factory, namespaces):  # noqa: F811
    ns = namespaces("fc")
    _, inner = veth(None, "10.204.0.1/24", ns, "10.204.0.2/24")
    ns.exec("ip", "addr", "add", "10.204.0.3/24", "dev", inner)
    f = ferryd_factory(f"""
[admin]
address = "10.204.0.2:9100"
[server]
workers = 1
# The allocation left at the end is not the test's subject: no drain when it stops.
drain_seconds = 0
[turn]
realm = "ferry.test"
relay_ipv4 = "10.204.0.3"
[[turn.user]]
name = "test"
password = "pass"
""" + listener("turn-udp", 3478, host="10.204.0.2"), prefix=ns.prefix(), admin_host="10.204.0.2", admin_port=9100)
    server = ("10.204.0.2", 3478)
    a = tc.TurnClient(server, "test", "pass", bind="10.204.0.1")
    assert a.allocate().ok
    ns.exec("ip", "addr", "del", "10.204.0.3/24", "dev", inner)
    b = tc.TurnClient(server, "test", "pass", bind="10.204.0.1")
    assert b.allocate().code == 508
    assert failures(f, "address_unavailable") == 1
    wait_until(lambda: "reason=address_unavailable" in f.output(), what=f.output)
    a.close()
    b.close()
