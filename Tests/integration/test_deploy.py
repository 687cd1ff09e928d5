"""The systemd units in deploy/ pass `systemd-analyze verify` (with ExecStart pointed at the
binaries this build made, since verify checks that executables exist)."""
import os
import shutil
import subprocess

from conftest import ROOT, binary


def test_units_verify(tmpdir_path):
    src = os.path.join(ROOT, "deploy", "systemd")
    for name in os.listdir(src):
        if name.endswith(".conf"):
            continue  # drop-ins: test_xdp_drop_in_verifies
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
    for directive in ["Type=notify", "WatchdogSec=", "User=ferry", "Group=ferry", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                      "ProtectSystem=strict", "NoNewPrivileges=yes", "SystemCallFilter=@system-service",
                      # The package's 0750 on /var/lib/ferry and /etc/ferry, kept at every start.
                      "StateDirectoryMode=0750", "ConfigurationDirectoryMode=0750"]:
        assert any(line.startswith(directive) for line in text.splitlines()), directive
    # A dynamic user could not read a root:ferry 0640 config: operators would make it world-readable.
    assert not any(line.startswith("DynamicUser") for line in text.splitlines())


def test_deploy_config_is_valid(tmpdir_path):
    """The shipped file parses and is refused for its placeholders only (test_config_check.py
    names them); with them replaced it passes (host checks skipped: its certificate and address
    are another machine's)."""
    shipped = os.path.join(ROOT, "deploy", "ferry.toml")
    r = subprocess.run([binary("ferry"), "config", "check", "--no-host", shipped], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr
    assert all("is a placeholder" in l or "is a documentation address" in l or "is an example name" in l
               for l in r.stderr.splitlines()), r.stderr
    edited = os.path.join(tmpdir_path, "ferry.toml")
    with open(shipped) as src, open(edited, "w") as dst:
        dst.write(src.read().replace("replace-with-the-secret-your-management-server-uses", "0123456789abcdef0123456789abcdef")
                  .replace("203.0.113.10", "10.0.3.7").replace("relay.example.org", "relay.acme.test"))
    r = subprocess.run([binary("ferry"), "config", "check", "--no-host", edited], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_xdp_drop_in_verifies_and_grants_only_what_xdp_needs(tmpdir_path):
    """deploy/systemd/ferryd-xdp.conf (docs/xdp.md) applied to the service: still valid, and it
    adds CAP_BPF, CAP_NET_ADMIN and the bpf() call to the hardened sandbox, nothing else."""
    src = os.path.join(ROOT, "deploy", "systemd")
    drop_in = open(os.path.join(src, "ferryd-xdp.conf")).read()
    service = open(os.path.join(src, "ferryd.service")).read().replace("/usr/local/bin/ferryd", binary("ferryd")) \
        .replace("/usr/local/bin/ferry ", binary("ferry") + " ")
    service = "\n".join(l for l in service.splitlines() if not l.startswith(("Requires=ferryd.socket", "After=")))
    path = os.path.join(tmpdir_path, "ferryd.service")
    with open(path, "w") as f:
        f.write(service + "\n" + drop_in)
    r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True, cwd=tmpdir_path)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    granted = [l for l in drop_in.splitlines() if l and not l.startswith(("#", "["))]
    assert granted == ["CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_BPF CAP_NET_ADMIN",
                       "AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_BPF CAP_NET_ADMIN", "SystemCallFilter=bpf"], granted
