"""`ferry bench` measures a TURN server through standard requests only: against ferryd its
counts agree with ferryd's own relay counters, and coturn (Debian's turnserver) is measured by the
same command."""
import json
import os
import subprocess

from conftest import binary, free_port, turn_base, turn_listeners, wait_until

import turnclient as tc


def bench(url, *args):
    r = subprocess.run([binary("ferry"), "bench", url, "--json", "--quiet", "--allocations", "4", "--rate", "400",
                        "--duration", "1", "--size", "100", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_bench_against_ferryd_agrees_with_its_counters(ferryd_factory):
    port = free_port()
    f = ferryd_factory(turn_base() + turn_listeners(udp=port))
    # No policy allow is needed for relayed addresses reaching each other (the relay's own).
    result = bench(f"turn:127.0.0.1:{port}", "--user", "test", "--password", "pass")
    assert 350 <= result["sent"] <= 450, result
    assert result["received"] >= result["sent"] * 0.99, result
    assert 0 < result["latency_us"]["p50"] <= result["latency_us"]["p99"] <= result["latency_us"]["max"], result
    assert f.metric("ferry_turn_allocations_created_total") == 4
    assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_client"}) >= result["received"]


def test_bench_measures_coturn_the_same_way(tmpdir_path):
    port = free_port()
    proc = subprocess.Popen(["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "-L", "127.0.0.1", "-E", "127.0.0.1",
                             "-p", str(port), "-r", "bench", "-a", "-u", "bench:bench-pass", "--allow-loopback-peers",
                             "--db", os.path.join(tmpdir_path, "turndb"), "--log-file", "/dev/null", "--no-stdout-log",
                             "--pidfile", os.path.join(tmpdir_path, "turn.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up():
            c = tc.TurnClient(("127.0.0.1", port), timeout=0.3)
            try:
                return c.binding().ok
            finally:
                c.close()
        wait_until(up, timeout=10, ignore=(OSError,))
        result = bench(f"turn:127.0.0.1:{port}", "--user", "bench", "--password", "bench-pass")
        assert result["received"] >= result["sent"] * 0.99, result
    finally:
        proc.terminate()
        proc.wait(5)
