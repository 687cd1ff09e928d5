"""`ferry tunnel` on the native relay: wireguard-go behind symmetric NATs in network namespaces
(lab.py), ferryd handing out its native relay (`wgrelay:`) next to TURN. ICE settles on the TURN
pair, then both agents bind from WireGuard's own port and point WireGuard at the relay: the
pings cross ferryd's native relay and no agent touches a WireGuard packet after the switch."""
import os

import pytest

from conftest import wait_until
from lab import FERRY_IP
from test_tunnel_e2e import Setup, ferryd_config, pytestmark, setups  # noqa: F401  (the same skip conditions)


class NativeSetup(Setup):
    native_urls = [f"wgrelay:{FERRY_IP}:3479"]

    def start_ferryd(self):
        urls = "".join(f'"{u}", ' for u in self.native_urls)
        config = ferryd_config(self.cert, self.key).replace('self_relay_urls = [', f'self_relay_urls = [{urls}') + f"""
[[listener]]
name = "relay-udp"
address = "{FERRY_IP}:3479"
service = "relay"
"""
        from lab import ADMIN_IP
        return self.ferryd_factory(config, prefix=self.lab.ferry.prefix(), admin_host=ADMIN_IP, admin_port=9100)


@pytest.fixture
def native_setup(ferryd_factory, tmpdir_path):
    yield from setups(ferryd_factory, tmpdir_path, NativeSetup)


def agent_packets(s, name):
    st = s.status(name)
    p = st["peers"][0]
    return p["rx_packets"] + p["tx_packets"]


def test_symmetric_nats_move_onto_the_native_relay_and_the_agents_leave_the_path(native_setup):
    s = native_setup(nat="symmetric")
    s.wait_for_ping()
    wait_until(lambda: s.path("a") == "native-relay" and s.path("b") == "native-relay", timeout=20, what=s.logs)
    for name in ("a", "b"):
        st = s.status(name)
        assert st["shared_port"] == "udp 51820" and st["native_relays"] == [f"wgrelay:{FERRY_IP}:3479"], st
        assert st["peers"][0]["wireguard_endpoint"] == f"{FERRY_IP}:3479", st
    before = {n: agent_packets(s, n) for n in ("a", "b")}
    native_before = s.ferryd.metric("ferry_relay_packets_total") or 0
    turn_before = s.relayed_packets()
    r = s.ping(count=50, interval=0.02)
    assert " 0% packet loss" in r.stdout, r.stdout + s.logs()
    wait_until(lambda: s.status("a") and s.status("b"), timeout=3)
    # The agents' sockets carried none of it; ferryd's native relay carried all 100 packets; TURN
    # carried only ICE's consent checks, which go on between the agents.
    assert {n: agent_packets(s, n) for n in ("a", "b")} == before, s.logs()
    assert (s.ferryd.metric("ferry_relay_packets_total") or 0) - native_before >= 100
    assert s.relayed_packets() - turn_before < 40
    assert s.ferryd.metric("ferry_relay_sessions_active") == 1


def test_proxy_mode_keeps_the_agents_on_the_path(native_setup, tmpdir_path):
    s = native_setup(nat="symmetric", extra_args=["--proxy"])
    s.wait_for_ping()
    wait_until(lambda: s.path("a") == "relayed" and s.path("b") == "relayed", timeout=20, what=s.logs)
    assert s.status("a")["shared_port"] == "off (--proxy)"
    r = s.ping(count=10, interval=0.05)
    assert " 0% packet loss" in r.stdout, r.stdout + s.logs()
    assert not s.ferryd.metric("ferry_relay_packets_total")


def test_a_restarted_ferryd_carries_native_traffic_again_within_10s(native_setup):
    """The relay forgets every session when ferryd restarts; the agents bind again as soon as
    signaling is back, and WireGuard's endpoint never moves."""
    s = native_setup(nat="symmetric")
    s.wait_for_ping()
    wait_until(lambda: s.path("a") == "native-relay" and s.path("b") == "native-relay", timeout=20, what=s.logs)
    s.ping_through_a_restart()
    assert s.ferryd.metric("ferry_relay_packets_total") >= 100, "after the restart the pings crossed the native relay"


class NativeStreamSetup(NativeSetup):
    """The native relay's stream side handed out too (`wgrelays:` on the TLS listener, 443)."""
    native_urls = [f"wgrelay:{FERRY_IP}:3479", f"wgrelays:{FERRY_IP}:443"]


@pytest.fixture
def native_stream_setup(ferryd_factory, tmpdir_path):
    yield from setups(ferryd_factory, tmpdir_path, NativeStreamSetup)


def test_udp_blocked_on_one_side_binds_over_the_stream_side(native_stream_setup):
    """(c) of issue 21: B's network lets only TCP 443 out. B's agent binds its end over TLS and
    carries B's WireGuard packets on that stream; A's WireGuard talks to the relay's UDP port
    from its own port, past A's agent."""
    s = native_stream_setup(nat="symmetric", block_b=True)
    s.wait_for_ping()
    wait_until(lambda: s.path("a") == "native-relay" and s.path("b") == "native-relay-stream", timeout=30, what=s.logs)
    assert s.status("a")["peers"][0]["wireguard_endpoint"] == f"{FERRY_IP}:3479"
    assert s.status("b")["peers"][0]["native_relay"] == f"wgrelays:{FERRY_IP}:443"
    before = {n: agent_packets(s, n) for n in ("a", "b")}
    native_before = s.ferryd.metric("ferry_relay_packets_total") or 0
    r = s.ping(count=50, interval=0.02)
    assert " 0% packet loss" in r.stdout, r.stdout + s.logs()
    wait_until(lambda: s.status("a") and s.status("b"), timeout=3)
    assert agent_packets(s, "a") == before["a"], "A's agent carries nothing: " + s.logs()
    # The status file is rewritten about once a second: wait for the one written after the pings.
    wait_until(lambda: agent_packets(s, "b") - before["b"] >= 100, what=lambda: "B's agent carries B's side over the stream")
    assert (s.ferryd.metric("ferry_relay_packets_total") or 0) - native_before >= 100
    assert s.ferryd.metric("ferry_relay_streams_total") >= 1 and s.ferryd.metric("ferry_relay_sessions_active") == 1
