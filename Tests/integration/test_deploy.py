"""The systemd units in deploy/ pass `systemd-analyze verify` (with ExecStart pointed at the
binaries this build made, since verify checks that executables exist)."""
import os
import shutil
import subprocess

from conftest import ROOT, binary


def test_units_verify(tmpdir_path):
    src = os.path.join(ROOT, "deploy", "systemd")
    for name in os.listdir(src):
        text = open(os.path.join(src, name)).read()
        text = text.replace("/usr/local/bin/ferryd", binary("ferryd")).replace("/usr/local/bin/ferry ", binary("ferry") + " ")
        with open(os.path.join(tmpdir_path, name), "w") as f:
            f.write(text)
    units = [os.path.join(tmpdir_path, n) for n in sorted(os.listdir(tmpdir_path)) if n.endswith((".service", ".socket"))]
    assert len(units) == 4
    r = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, cwd=tmpdir_path)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_service_is_hardened():
    text = open(os.path.join(ROOT, "deploy", "systemd", "ferryd.service")).read()
    for directive in ["Type=notify", "WatchdogSec=", "DynamicUser=yes", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                      "ProtectSystem=strict", "NoNewPrivileges=yes", "SystemCallFilter=@system-service"]:
        assert directive in text


def test_deploy_config_is_valid():
    r = subprocess.run([binary("ferry"), "config", "check", os.path.join(ROOT, "deploy", "ferry.toml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
