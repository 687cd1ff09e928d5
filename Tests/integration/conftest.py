"""Helpers for the integration tests: they run the real ferryd and ferry binaries over real
sockets and talk to them with clients nobody here wrote (curl, systemd-socket-activate, coturn's
tools, aioice)."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("FERRY_BIN_DIR") or os.path.join(ROOT, ".build", "release")
# Set by scripts/sanitize.sh when the binaries are ASan builds: resident memory (RSS) then
# includes ASan's quarantine of freed memory (256 MB by default), so the few assertions on RSS
# are skipped; every other assertion of those tests still runs (docs/testing.md).
UNDER_ASAN = os.environ.get("FERRY_SANITIZER") == "address"


def nats_env():
    """The environment of a ferryd with [signal.nats] under AddressSanitizer: leak checking off
    for that process only. cnats's own threads leave OpenSSL allocations at exit that LeakSanitizer
    reports with stacks ending in libcrypto (cnats has no frame pointers), so they can be neither
    attributed nor suppressed by library; every other ASan check stays on (docs/testing.md)."""
    return {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"} if UNDER_ASAN else {}


def binary(name):
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        pytest.fail(f"{path} not built: run scripts/test.sh (or set FERRY_BIN_DIR)")
    return path


_handed_out = set()


def wait_until(condition, timeout=5, interval=0.05, ignore=(), what=None):
    """Polls `condition()` until it returns something true and returns that; fails after `timeout`
    seconds, saying `what()` (or the last value). Exceptions in `ignore` count as not yet. The one
    polling loop of the tests: each waits for a state the server reaches, never for a fixed time."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = condition()
            if last:
                return last
        except ignore as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"not reached in {timeout}s: {what() if what else last!r}")
        time.sleep(interval)


async def wait_until_async(condition, timeout=5, interval=0.05, what=None):
    """`wait_until` for a test running an asyncio loop: sleeps with `asyncio.sleep`, so the loop's
    sessions stay served while it waits."""
    import asyncio
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not reached in {timeout}s: {what() if what else last!r}")
        await asyncio.sleep(interval)


def turn_base(workers=2, drain=1):
    """The head of a TURN test config: workers, a short drain, realm ferry.test relaying from
    127.0.0.1, the static user test/pass, and loopback peers allowed (denied by default)."""
    return f"""
[server]
workers = {workers}
drain_seconds = {drain}
[turn]
realm = "ferry.test"
relay_ipv4 = "127.0.0.1"
[[turn.user]]
name = "test"
password = "pass"
[policy]
allow = ["127.0.0.0/8"]
"""


def listener(name, port, transport="udp", service=None, forward_to=None, host="127.0.0.1"):
    """One `[[listener]]` table of a test config (docs/configuration.md)."""
    lines = ["[[listener]]", f'name = "{name}"', f'address = "{host}:{port}"']
    if transport != "udp":
        lines.append(f'transport = "{transport}"')
    if service:
        lines.append(f'service = "{service}"')
    if forward_to:
        lines.append(f'forward_to = "{host}:{forward_to}"')
    return "\n".join(lines) + "\n"


def turn_listeners(udp=None, tcp=None, tls=None):
    """The usual TURN listeners of a test config, named turn-udp, turn-tcp and turn-tls; a port
    left out leaves its listener out."""
    return "".join(listener(f"turn-{t}", port, t) for t, port in (("udp", udp), ("tcp", tcp), ("tls", tls)) if port)


def free_port(kind=socket.SOCK_STREAM):
    """A port that is free for both TCP and UDP at the moment of asking, and never one handed out
    before in this run: the kernel may offer a port again as soon as the probe socket closes, so
    two calls before anything binds (a listener's port, then the admin port) could get the same
    one, and ferryd then failed to start with EADDRINUSE."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in _handed_out:
            continue
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind(("127.0.0.1", port))
            _handed_out.add(port)
            return port
        except OSError:
            continue


def http_get(port, path, timeout=3, host="127.0.0.1"):
    """(status, body) of GET http://host:port/path with urllib; errors give their status."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(port, name, labels=None, host="127.0.0.1"):
    """The value of one series in /metrics, or None."""
    _, body = http_get(port, "/metrics", host=host)
    want = name if not labels else name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    return None


class NotifySocket:
    """A NOTIFY_SOCKET like systemd's: collects sd_notify datagrams."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []

    def wait_for(self, text, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(text in m for m in self.messages):
                return True
            self.sock.settimeout(max(0.01, deadline - time.time()))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                break
        return any(text in m for m in self.messages)

    def close(self):
        self.sock.close()


_running = []


@pytest.fixture(autouse=True)
def _reap_ferryd():
    """Whatever a test started, it does not outlive the test, even when the test fails."""
    yield
    while _running:
        f = _running.pop()
        if f.proc.poll() is None:
            try:
                os.killpg(f.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            f.proc.wait()


class Ferryd:
    """A running ferryd with its own config file, admin port and captured log."""

    def __init__(self, config_text, tmpdir, extra_args=(), env=None, prefix=(), admin_port=None, wait=True,
                 admin_host="127.0.0.1"):
        self.tmpdir = tmpdir
        self.admin_port = admin_port or free_port()
        self.admin_host = admin_host
        self.config_path = os.path.join(tmpdir, "ferry.toml")
        if config_text is not None and "[admin]" not in config_text:
            config_text = f'[admin]\naddress = "{admin_host}:{self.admin_port}"\n' + config_text
        if config_text is not None:
            with open(self.config_path, "w") as f:
                f.write(config_text)
        self.log_path = os.path.join(tmpdir, "ferryd.log")
        self.log = open(self.log_path, "w")
        args = list(prefix) + [binary("ferryd")]
        if config_text is not None:
            args += ["--config", self.config_path]
        args += list(extra_args)
        full_env = dict(os.environ)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        _running.append(self)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=15):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"ferryd exited with {self.proc.returncode}:\n{self.output()}")
            return http_get(self.admin_port, "/readyz", timeout=1, host=self.admin_host)[0] == 200
        wait_until(ready, timeout=timeout, ignore=(OSError,), what=lambda: f"ferryd not ready:\n{self.output()}")

    def output(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def metric(self, name, labels=None):
        return metric(self.admin_port, name, labels, host=self.admin_host)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def tmpdir_path():
    with tempfile.TemporaryDirectory(prefix="ferry-test-") as d:
        yield d


@pytest.fixture
def ferryd_factory(tmpdir_path):
    started = []

    def start(config_text, **kw):
        f = Ferryd(config_text, tmpdir_path, **kw)
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()


def loopback_signal_config(port, token_secret, rest_secret, transport="udp", workers=1):
    """ferryd on loopback for two `ferry tunnel` agents: TURN on `port` (UDP and TCP), plaintext
    signaling there too, handing out this relay over `transport` with `rest_secret`'s credentials."""
    base = turn_base(workers=workers).replace('relay_ipv4 = "127.0.0.1"\n', f'relay_ipv4 = "127.0.0.1"\nstatic_auth_secrets = ["{rest_secret}"]\n')
    return base + f"""
[signal]
enabled = true
allow_plaintext = true
token_secrets = ["{token_secret}"]
self_relay_urls = ["turn:127.0.0.1:{port}?transport={transport}"]
""" + listener("turn-udp", port) + listener("turn-tcp", port, "tcp")


class LoopbackAgents:
    """Two `ferry tunnel` agents on loopback with `--peer` endpoints (no WireGuard), signaling
    through ferryd at `port`: agent i delivers the other's packets to `sinks[i]`, and its local
    endpoint (`wait`) carries packets to the other. `envs[i]`: extra environment of agent i;
    `signals[i]`: agent i's signaling URLs (default: ferryd at `port`), tried in order."""

    def __init__(self, tmpdir, port, token_secret, sinks, relay_only, envs=({}, {}), signals=None):
        ferry = binary("ferry")
        keys, pubs = [], []
        for name in ("a", "b"):
            key = os.path.join(tmpdir, f"{name}.key")
            pubs.append(subprocess.run([ferry, "keygen", "--out", key], capture_output=True, text=True, check=True).stdout.strip())
            keys.append(key)
        self.procs = []
        self.keys = pubs
        for me, other in ((0, 1), (1, 0)):
            token = subprocess.run([ferry, "token", "--secret", token_secret, "--network", "n", "--peer", pubs[me]],
                                   capture_output=True, text=True, check=True).stdout.strip()
            status = os.path.join(tmpdir, f"status{me}.json")
            urls = signals[me] if signals else [f"ws://127.0.0.1:{port}/v1/signal"]
            args = [ferry, "tunnel", "run", "--key", keys[me], "--peer", f"{pubs[other]}=127.0.0.1:{sinks[me].getsockname()[1]}",
                    "--token", token, "--status-file", status, "--state-file", status + ".state"]
            for u in urls:
                args += ["--signal", u]
            self.procs.append((subprocess.Popen(args + (["--relay-only"] if relay_only else []), env=dict(os.environ, **envs[me]),
                                                stdout=open(status + ".log", "w"), stderr=subprocess.STDOUT), status))

    def logs(self):
        return "".join(open(status + ".log").read() for _, status in self.procs)

    def wait(self, path, transport=None, timeout=15):
        """Each agent's local endpoint, once both use `path` (direct, relayed) over `transport`."""
        def state(status):
            with open(status) as fh:
                s = json.load(fh)
            p = s["peers"][0]
            ok = p["path"] == path and (transport is None or s["relay"].startswith(transport))
            return ok and ("127.0.0.1", int(p["local_endpoint"].split(":")[1]))
        return [wait_until(lambda s=status: state(s), timeout=timeout, ignore=(OSError, ValueError, KeyError), what=self.logs)
                for _, status in self.procs]

    def close(self):
        for p, _ in self.procs:
            p.terminate()
            p.wait(5)
