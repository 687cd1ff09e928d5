"""The Debian package (scripts/package-deb.sh), on this test machine: lintian with no error or
warning, an install, the installed units through `systemd-analyze verify` and the installed
configuration through `ferry config check`, the installed ferryd serving as the `ferry` user and
checked with the installed `ferry probe`, then a purge that leaves nothing of it behind. Needs
root and dpkg; not under AddressSanitizer (the package builds its own release binaries)."""
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess

import pytest

from conftest import ROOT, UNDER_ASAN, free_port, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or UNDER_ASAN or not shutil.which("dpkg-deb"),
                                reason="needs root and dpkg; the package is built once, without sanitizers")

UNITS = ["ferryd.service", "ferryd.socket", "ferryd-admin.socket", "ferryd-tls.socket"]


def run(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, **kw)


def installed():
    return "ok installed" in run("dpkg-query", "-W", "-f=${Status}", "ferry").stdout


def test_the_package_installs_serves_and_purges_cleanly(tmpdir_path):
    if installed():
        run("dpkg", "--purge", "ferry")  # a previous run that stopped half-way
    built = run(os.path.join(ROOT, "scripts", "package-deb.sh"), "--out", tmpdir_path)
    assert built.returncode == 0, built.stderr[-3000:]
    deb = built.stdout.strip().splitlines()[-1]
    assert os.path.basename(deb).startswith("ferry_") and deb.endswith(".deb")

    lint = run("lintian", "-I", "--fail-on", "error,warning", deb)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "unused-override" not in lint.stdout, lint.stdout
    assert not [l for l in lint.stdout.splitlines() if l.startswith(("E:", "W:"))], lint.stdout

    try:
        inst = run("dpkg", "-i", deb)
        assert inst.returncode == 0, inst.stdout + inst.stderr
        assert "edit /etc/ferry/ferry.toml" in inst.stdout
        # The binaries carry their Swift runtime: nothing outside Debian's libraries.
        for b in ("/usr/bin/ferryd", "/usr/bin/ferry"):
            assert os.access(b, os.X_OK)
            assert "libswift" not in run("ldd", b).stdout
        assert run("/usr/bin/ferry", "version").stdout.strip()
        # The system user, its state directory, the configuration only it and root may read.
        user = pwd.getpwnam("ferry")
        assert user.pw_uid < 1000 and user.pw_dir == "/var/lib/ferry" and user.pw_shell.endswith("nologin")
        st = os.stat("/var/lib/ferry")
        assert st.st_uid == user.pw_uid and stat.S_IMODE(st.st_mode) == 0o750
        st = os.stat("/etc/ferry/ferry.toml")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, grp.getgrnam("ferry").gr_gid, 0o640)
        # The installed units and configuration.
        units = [f"/lib/systemd/system/{u}" for u in UNITS]
        verify = run("systemd-analyze", "verify", *units)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
        service = open("/lib/systemd/system/ferryd.service").read()
        lines = service.splitlines()
        assert "User=ferry" in lines and not any(l.startswith("DynamicUser") for l in lines) and "ExecStart=/usr/bin/ferryd" in service
        # systemd applies these modes at every start: the postinst's 0750 survives it.
        assert "StateDirectoryMode=0750" in lines and "ConfigurationDirectoryMode=0750" in lines
        assert "NoNewPrivileges=yes" in service and "ProtectSystem=strict" in service
        # The shipped file is refused until its placeholders are replaced, each named by key.
        check = run("/usr/bin/ferry", "config", "check", "/etc/ferry/ferry.toml")
        assert check.returncode == 1, check.stdout + check.stderr
        for key in ("turn.static_auth_secrets", "turn.relay_ipv4", "turn.realm", "tls.certificate"):
            assert f"/etc/ferry/ferry.toml: {key}: " in check.stderr, (key, check.stderr)
        # Edited as an operator would (a secret, this host's address, a realm, a certificate): OK.
        shipped = open("/etc/ferry/ferry.toml").read()
        os.makedirs("/etc/ferry/tls", exist_ok=True)
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=relay.pkg.test",
            "-addext", "subjectAltName=DNS:relay.pkg.test", "-days", "30",
            "-keyout", "/etc/ferry/tls/privkey.pem", "-out", "/etc/ferry/tls/fullchain.pem")
        with open("/etc/ferry/ferry.toml", "w") as fh:
            fh.write(shipped.replace("replace-with-the-secret-your-management-server-uses", "0123456789abcdef0123456789abcdef")
                     .replace("203.0.113.10", "127.0.0.1").replace("relay.example.org", "relay.pkg.test"))
        check = run("/usr/bin/ferry", "config", "check", "/etc/ferry/ferry.toml")
        assert check.returncode == 0, check.stdout + check.stderr
        assert re.search(r"certificate /etc/ferry/tls/fullchain.pem: relay.pkg.test; (29|30) days left", check.stdout), check.stdout
        assert "\n.TH FERRY 1 " in "\n" + run("zcat", "/usr/share/man/man1/ferry.1.gz").stdout
        assert os.path.exists("/usr/share/man/man8/ferryd.8.gz")
        assert os.path.exists("/usr/share/ferry/grafana/ferry-dashboard.json")
        assert os.access("/usr/share/ferry/certbot/ferry-deploy-hook", os.X_OK)

        # The installed ferryd serves as the ferry user, and the installed ferry probe passes.
        udp, admin = free_port(socket.SOCK_DGRAM), free_port()
        config = os.path.join(tmpdir_path, "probe.toml")
        with open(config, "w") as f:
            f.write(f'[admin]\naddress = "127.0.0.1:{admin}"\n[turn]\nrealm = "pkg.test"\nrelay_ipv4 = "127.0.0.1"\n'
                    f'[[turn.user]]\nname = "probe"\npassword = "probe-password"\n[policy]\nallow = ["127.0.0.0/8"]\n'
                    f'[[listener]]\nname = "turn-udp"\naddress = "127.0.0.1:{udp}"\n')
        os.chmod(config, 0o644)
        os.chmod(tmpdir_path, 0o755)
        server = subprocess.Popen(["setpriv", "--reuid=ferry", "--regid=ferry", "--init-groups", "/usr/bin/ferryd", "--config", config],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            wait_until(lambda: socket.create_connection(("127.0.0.1", admin), timeout=1).close() or True, timeout=15, ignore=(OSError,))
            probe = run("/usr/bin/ferry", "probe", "--user", "probe", "--password", "probe-password", f"turn:127.0.0.1:{udp}")
            assert probe.returncode == 0, probe.stdout + probe.stderr
            assert "turn echo" in probe.stdout
            # setpriv execs ferryd: the same pid, now the ferry user's.
            assert "/usr/bin/ferryd" in open(f"/proc/{server.pid}/cmdline").read()
            assert os.stat(f"/proc/{server.pid}").st_uid == user.pw_uid
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(15)
    finally:
        # The certificate is the operator's, not the package's: gone before the purge checks.
        shutil.rmtree("/etc/ferry/tls", ignore_errors=True)
        purge = run("dpkg", "--purge", "ferry")
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert not installed()
    for path in ["/usr/bin/ferryd", "/usr/bin/ferry", "/etc/ferry", "/var/lib/ferry", "/usr/share/ferry",
                 "/usr/share/doc/ferry"] + [f"/lib/systemd/system/{u}" for u in UNITS]:
        assert not os.path.exists(path), f"{path} is left after the purge"
