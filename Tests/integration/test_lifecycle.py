"""Process life: readiness and stop through a NOTIFY_SOCKET, socket activation with
systemd-socket-activate, reload on SIGHUP, and configuration errors."""
import os
import re
import signal
import socket
import subprocess
import time

from conftest import Ferryd, NotifySocket, binary, free_port, http_get, listener, turn_listeners, wait_until


def forward_config(name, port, sink_port):
    return listener(name, port, service="forward", forward_to=sink_port)


def test_ready_then_sigterm_exits_zero_with_stopping(tmpdir_path):
    notify = NotifySocket(tmpdir_path)
    f = Ferryd("[server]\ndrain_seconds = 3\n", tmpdir_path, env={"NOTIFY_SOCKET": notify.path})
    assert notify.wait_for("READY=1")
    assert any("STATUS=serving" in m for m in notify.messages)
    started = time.time()
    f.signal(signal.SIGTERM)
    assert f.proc.wait(10) == 0
    assert time.time() - started < 3, "with no sessions the drain ends at once"
    assert notify.wait_for("STOPPING=1")
    notify.close()
    f.stop()


def test_draining_server_reports_not_ready(tmpdir_path):
    # SIGINT twice: the first starts the drain, the second stops at once.
    f = Ferryd("", tmpdir_path)
    assert http_get(f.admin_port, "/readyz")[0] == 200
    f.signal(signal.SIGINT)
    assert f.proc.wait(10) == 0
    f.stop()


def test_socket_activation_uses_passed_udp_and_tcp_sockets(tmpdir_path):
    """ferryd under systemd-socket-activate: a TCP socket named "admin" and two UDP sockets named
    "bench" (one per worker). The config names other ports, which must stay unbound."""
    notify = NotifySocket(tmpdir_path)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    cfg_udp, act_udp1, act_udp2 = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    cfg_admin, act_admin = free_port(), free_port()
    config = f'[server]\nworkers = 2\n[admin]\naddress = "127.0.0.1:{cfg_admin}"\n' + forward_config("bench", cfg_udp, sink.getsockname()[1])
    prefix = ["systemd-socket-activate", "-l", f"127.0.0.1:{act_admin}", "--fdname=admin", "-E", "NOTIFY_SOCKET",
              "--", "systemd-socket-activate", "--datagram", "-l", f"127.0.0.1:{act_udp1}", "-l", f"127.0.0.1:{act_udp2}",
              "--fdname=admin:bench:bench", "-E", "NOTIFY_SOCKET", "--"]
    f = Ferryd(config, tmpdir_path, prefix=prefix, env={"NOTIFY_SOCKET": notify.path}, admin_port=act_admin, wait=False)
    # systemd-socket-activate execs the service on the first connection / datagram.
    def connected():
        socket.create_connection(("127.0.0.1", act_admin), timeout=1).close()
        return True
    wait_until(connected, timeout=10, ignore=(OSError,))
    # The pending connection also starts the inner systemd-socket-activate, and so ferryd.
    assert notify.wait_for("READY=1"), f.output()
    f.wait_ready()
    # Datagrams to both passed sockets are forwarded to the sink.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.sendto(b"first", ("127.0.0.1", act_udp1))
    probe.sendto(b"second", ("127.0.0.1", act_udp2))
    got = {sink.recvfrom(100)[0], sink.recvfrom(100)[0]}
    assert got == {b"first", b"second"}
    assert "socket activation" in f.output()
    # The configured ports were never bound: ferryd used the passed sockets instead.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", cfg_udp))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", cfg_admin))
    f.signal(signal.SIGTERM)
    assert f.proc.wait(10) == 0
    assert notify.wait_for("STOPPING=1")
    f.stop()
    notify.close()


def test_unclaimed_activated_socket_is_reported(tmpdir_path):
    port, admin = free_port(socket.SOCK_DGRAM), free_port()
    prefix = ["systemd-socket-activate", "--datagram", "-l", f"127.0.0.1:{port}", "--fdname=mystery", "--"]
    f = Ferryd(f'[admin]\naddress = "127.0.0.1:{admin}"\n', tmpdir_path, prefix=prefix, admin_port=admin, wait=False)
    # systemd-socket-activate starts ferryd on the first datagram; keep knocking until it listens.
    knock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    def started():
        if "ferryd ready" in f.output():
            return True
        knock.sendto(b"x", ("127.0.0.1", port))
        return False
    wait_until(started, timeout=10, interval=0.1, what=f.output)
    f.wait_ready()
    assert "no listener uses" in f.output() and "mystery" in f.output()
    assert f.stop() == 0


def test_bad_config_exits_nonzero_naming_the_key(tmpdir_path):
    path = os.path.join(tmpdir_path, "bad.toml")
    with open(path, "w") as fh:
        fh.write("[engine]\nbatch_size = 0\n[server]\nworkerz = 1\n")
    r = subprocess.run([binary("ferryd"), "--config", path], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2
    assert "engine.batch_size: must be from 1 to 1024, got 0" in r.stderr
    assert "server.workerz: unknown key" in r.stderr


def test_bad_flag_value_is_rejected(tmpdir_path):
    r = subprocess.run([binary("ferryd"), "--log-level", "loud"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2
    assert "FERRY_LOG_LEVEL" in r.stderr and "loud" in r.stderr


def test_ferry_config_check(tmpdir_path):
    good = os.path.join(tmpdir_path, "good.toml")
    with open(good, "w") as fh:
        fh.write("[server]\nworkers = 2\n")
    r = subprocess.run([binary("ferry"), "config", "check", good], capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout
    bad = os.path.join(tmpdir_path, "bad.toml")
    with open(bad, "w") as fh:
        fh.write("[log]\nlevel = \"loud\"\n[admin]\naddress = \"x\"\n")
    r = subprocess.run([binary("ferry"), "config", "check", bad], capture_output=True, text=True)
    assert r.returncode == 1
    assert "log.level" in r.stderr and "admin.address" in r.stderr
    # The example documents every key with placeholder secrets and example names: it parses (no
    # other problem is reported), and the check refuses exactly those (test_config_check.py).
    example = os.path.join(os.path.dirname(__file__), "..", "..", "config", "ferry.example.toml")
    r = subprocess.run([binary("ferry"), "config", "check", "--no-host", example], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr, r.stderr
    assert all("is a placeholder" in l or "is an example name" in l for l in r.stderr.splitlines()), r.stderr
    r = subprocess.run([binary("ferry"), "version"], capture_output=True, text=True)
    assert r.stdout.startswith("ferry ")


def test_sighup_reloads_and_keeps_old_config_when_new_is_bad(tmpdir_path):
    notify = NotifySocket(tmpdir_path)
    f = Ferryd("[log]\nlevel = \"info\"\n", tmpdir_path, env={"NOTIFY_SOCKET": notify.path})
    assert notify.wait_for("READY=1")
    text = open(f.config_path).read()
    with open(f.config_path, "w") as fh:
        fh.write(text.replace('level = "info"', 'level = "debug"'))
    f.signal(signal.SIGHUP)
    wait_metric(f, "ferry_reloads_total", {"result": "ok"}, 1)
    assert notify.wait_for("RELOADING=1")
    with open(f.config_path, "w") as fh:
        fh.write(text + "\nnonsense = 1\n")
    f.signal(signal.SIGHUP)
    wait_metric(f, "ferry_reloads_total", {"result": "failed"}, 1)
    assert "reload failed; keeping the running configuration" in f.output()
    assert re.search(r"config problem key=\S*nonsense problem=\"unknown key\"", f.output()), f.output()
    assert http_get(f.admin_port, "/readyz")[0] == 200
    assert f.stop() == 0
    notify.close()


def wait_metric(f, name, labels, value, timeout=5):
    wait_until(lambda: f.metric(name, labels) == value, timeout=timeout, what=lambda: (name, labels, f.metric(name, labels)))


def test_reload_applies_or_names_every_changed_key(tmpdir_path):
    """Issue 8 §4: each changed key is applied or logged as needing a restart, by name, from the
    key table; a restart-only key keeps its running value, so it is named again on the next
    reload; every problem of a bad file is logged, one line each; and `ferry config check
    --running` tells the same beforehand."""
    port = free_port()
    base = f"""
[server]
drain_seconds = 10
[log]
level = "info"
[turn]
relay_ipv4 = "127.0.0.1"
default_lifetime = 600
[stream]
idle_timeout_seconds = 600
{turn_listeners(tcp=port)}"""
    f = Ferryd(base, tmpdir_path)
    running = os.path.join(tmpdir_path, "running.toml")
    with open(running, "w") as fh:
        fh.write(open(f.config_path).read())
    changed = (open(f.config_path).read().replace("drain_seconds = 10", "drain_seconds = 3")
               .replace('level = "info"', 'level = "debug"').replace("default_lifetime = 600", "default_lifetime = 300")
               .replace("idle_timeout_seconds = 600", "idle_timeout_seconds = 60")
               .replace("[stream]", "[stream]\nrequest_timeout_seconds = 5"))
    with open(f.config_path, "w") as fh:
        fh.write(changed)
    r = subprocess.run([binary("ferry"), "config", "check", f.config_path, "--running", running], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "reload applies: server.drain_seconds, log.level" in r.stdout, r.stdout
    assert "needs a restart: turn.default_lifetime, stream.idle_timeout_seconds, stream.request_timeout_seconds" in r.stdout, r.stdout
    for n in (1, 2):
        f.signal(signal.SIGHUP)
        wait_metric(f, "ferry_reloads_total", {"result": "ok"}, n)
    lines = [l for l in f.output().splitlines() if "configuration reloaded" in l]
    assert len(lines) == 2
    assert "applied=server.drain_seconds,log.level" in lines[0], lines[0]
    assert "applied=" not in lines[1], "applied keys are running now"
    for line in lines:
        assert "needs_restart=turn.default_lifetime,stream.idle_timeout_seconds,stream.request_timeout_seconds" in line, line
    with open(f.config_path, "w") as fh:
        fh.write(changed.replace("drain_seconds = 3", "drain_seconds = -1").replace('level = "debug"', 'level = "loud"')
                 + "\n[engine]\nbatch_size = 0\n")
    f.signal(signal.SIGHUP)
    wait_metric(f, "ferry_reloads_total", {"result": "failed"}, 1)
    out = f.output()
    for key in ("server.drain_seconds", "log.level", "engine.batch_size"):
        assert re.search(rf"config problem .*key={re.escape(key)}", out), (key, out[-2000:])
    assert "problems=3" in out
    assert f.stop() == 0


def test_development_default_runs_on_loopback(tmpdir_path):
    """No config file: the built-in default, admin on 127.0.0.1:9090 unless overridden."""
    admin = free_port()
    f = Ferryd(None, tmpdir_path, extra_args=["--admin-address", f"127.0.0.1:{admin}"], admin_port=admin)
    assert "development default" in f.output()
    assert f.stop() == 0
