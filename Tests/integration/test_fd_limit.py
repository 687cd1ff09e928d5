"""ferryd at its open-file limit (run under `prlimit`, as LimitNOFILE= would set it): a client
holding more connections than fit, or allocations filling the limit, must neither make the
workers spin nor pass silently; /healthz answers, /readyz says why it is not ready, and new
connections are accepted again once old ones close."""
import http.client
import socket
import time

import turnclient as tc
from conftest import UNDER_ASAN, Ferryd, free_port, listener, turn_base, turn_listeners, wait_until

TICKS = 100  # /proc's clock ticks per second
CPU_SCALE = 3 if UNDER_ASAN else 1  # ASan runs ferryd 2-3x slower


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime


class Admin:
    """One keep-alive admin connection opened before the descriptors run out (a new one could
    not be accepted then)."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        assert self.get("/healthz")[0] == 200   # connected now, while a descriptor is free

    def get(self, path):
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        return r.status, r.read().decode()

    def metric(self, name, labels):
        _, body = self.get("/metrics")
        want = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        for line in body.splitlines():
            if line.startswith(want + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def test_connections_beyond_the_descriptor_limit_neither_spin_nor_pass_silently(tmpdir_path):
    tcp = free_port()
    f = Ferryd(turn_base(workers=2) + turn_listeners(tcp=tcp), tmpdir_path, prefix=["prlimit", "--nofile=200:200", "--"])
    try:
        admin = Admin(f.admin_port)
        assert admin.get("/healthz")[0] == 200
        held = []
        for _ in range(400):
            held.append(socket.create_connection(("127.0.0.1", tcp), timeout=5))
        wait_until(lambda: admin.metric("ferry_listener_accept_errors_total", {"listener": "stream", "reason": "fd_limit"}) > 0,
                   what=f.output)
        before = cpu_ticks(f.proc.pid)
        time.sleep(3)
        used = cpu_ticks(f.proc.pid) - before
        # Before: both cores busy, 600 ticks in 3 s. The paused listeners cost next to nothing.
        assert used < 60 * CPU_SCALE, f"ferryd used {used / TICKS:.2f} s of CPU in 3 s while at its descriptor limit"
        assert admin.get("/healthz")[0] == 200
        status, body = admin.get("/readyz")
        assert status == 503 and "open-file limit" in body, (status, body)
        line = next(l for l in f.output().splitlines() if "cannot accept connections" in l)
        assert "reason=fd_limit" in line and "open_files_limit=200" in line, line
        assert f.output().count("cannot accept connections") <= 2, "the log is rate-limited"
        for s in held:
            s.close()
        # Descriptors free again: the listener resumes and serves a new connection.
        def served():
            with socket.create_connection(("127.0.0.1", tcp), timeout=2) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.recv(4096).startswith(b"HTTP/1.1 200")
        wait_until(served, timeout=10, ignore=(OSError,))
    finally:
        f.stop()


def test_allocations_filling_the_descriptor_limit_are_refused_counted_and_shown(tmpdir_path):
    udp = free_port(socket.SOCK_DGRAM)
    # 150 clients from one address: their 401 challenges must not hit the per-source answer limit.
    config = turn_base(workers=1).replace('realm = "ferry.test"\n', 'realm = "ferry.test"\nunauthorized_per_second = 0\nmax_allocations_per_user = 1000\n')
    f = Ferryd(config + listener("turn-udp", udp), tmpdir_path, prefix=["prlimit", "--nofile=100:100", "--"])
    try:
        admin = Admin(f.admin_port)
        clients, codes = [], []
        for _ in range(150):
            c = tc.TurnClient(("127.0.0.1", udp), "test", "pass")
            clients.append(c)
            codes.append(c.allocate().code)
        assert 508 in codes and None in codes, codes
        assert admin.metric("ferry_turn_allocations_failed_total", {"reason": "fd_limit"}) == codes.count(508)
        before = cpu_ticks(f.proc.pid)
        time.sleep(2)
        assert cpu_ticks(f.proc.pid) - before < 40 * CPU_SCALE
        status, body = admin.get("/readyz")
        assert status == 503 and "open-file limit" in body
        assert "reason=fd_limit" in f.output()
        for c in clients:
            c.close()
    finally:
        f.stop()
