"""One ferryd per port: a second ferryd on the same ports would join the listeners'
SO_REUSEPORT groups and take a share of the flows (every allocation hashed to it broken), so it
refuses to start, naming the first. The lock goes with the process, however it ends, and
socket activation takes it too."""
import os
import signal
import socket
import subprocess

import turnclient as tc
from conftest import Ferryd, binary, free_port, turn_base, turn_listeners, wait_until


def second_start(config, tmpdir):
    """Starts another ferryd on `config`; its exit code and output (it must not stay up)."""
    d = os.path.join(tmpdir, "second")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "ferry.toml")
    with open(path, "w") as f:
        f.write(f'[admin]\naddress = "127.0.0.1:{free_port()}"\n' + config)
    try:
        r = subprocess.run([binary("ferryd"), "--config", path], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"a second ferryd on the same ports kept running:\n{e.stdout}{e.stderr}")
    return r.returncode, r.stdout + r.stderr


def test_a_second_ferryd_on_the_same_ports_refuses_and_the_first_keeps_every_flow(tmpdir_path):
    udp, tcp = free_port(socket.SOCK_DGRAM), free_port()
    config = turn_base(workers=2) + turn_listeners(udp=udp, tcp=tcp)
    first = Ferryd(config, tmpdir_path)
    code, output = second_start(config, tmpdir_path)
    assert code == 1, output
    assert f"already served by another ferryd (pid {first.proc.pid})" in output, output
    # Every flow still reaches the first: 64 clients from 64 source ports, each answered.
    for _ in range(64):
        c = tc.TurnClient(("127.0.0.1", udp), "test", "pass", timeout=2)
        assert c.binding().ok
        c.close()
    first.stop()


def test_the_lock_goes_with_the_process_however_it_ends(tmpdir_path):
    udp = free_port(socket.SOCK_DGRAM)
    config = turn_base(workers=2) + turn_listeners(udp=udp)
    first = Ferryd(config, tmpdir_path)
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(5)
    # A new ferryd starts on the same ports at once.
    again = Ferryd(config, tmpdir_path)
    c = tc.TurnClient(("127.0.0.1", udp), "test", "pass", timeout=2)
    assert c.binding().ok
    c.close()
    again.stop()


def test_socket_activation_holds_the_lock_of_the_passed_ports(tmpdir_path):
    udp, admin = free_port(socket.SOCK_DGRAM), free_port()
    config = turn_base(workers=1) + turn_listeners(udp=udp)
    prefix = ["systemd-socket-activate", "-l", f"127.0.0.1:{admin}", "--fdname=admin", "--",
              "systemd-socket-activate", "--datagram", "-l", f"127.0.0.1:{udp}", "--fdname=admin:turn-udp", "--"]
    activated = Ferryd(config, tmpdir_path, prefix=prefix, admin_port=admin, wait=False)

    def connected():
        socket.create_connection(("127.0.0.1", admin), timeout=1).close()
        return True
    wait_until(connected, timeout=10, ignore=(OSError,))
    activated.wait_ready()
    assert "socket activation" in activated.output()
    # systemd-socket-activate execs what it starts: ferryd has the pid the test started.
    assert "ferryd" in open(f"/proc/{activated.proc.pid}/cmdline").read()
    pid = activated.proc.pid
    code, output = second_start(config, tmpdir_path)
    assert code == 1, output
    assert f"udp port {udp} is already served by another ferryd (pid {pid})" in output, output
    activated.stop()
