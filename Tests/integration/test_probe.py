"""`ferry probe` against the real ferryd: every check passing on a healthy deployment (with the
TURN credentials its signaling welcome hands out), and failing clearly, with the failing step
named and a non-zero exit, against a stopped server, wrong credentials and an expired certificate."""
import datetime
import json
import os
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import binary, free_port, turn_base, turn_listeners

TOKEN_SECRET = "probe-token-secret-0123"
REST_SECRET = "probe-rest-secret-0123"


def certificate(directory, name="localhost", days_from=-30, days_to=30):
    """A self-signed certificate for `name`, valid from `days_from` to `days_to` days from now."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days_from)).not_valid_after(now + datetime.timedelta(days=days_to))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, f"{name}-{days_to}.pem"), os.path.join(directory, f"{name}-{days_to}.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def start(ferryd_factory, tmpdir_path, days_to=30):
    port, tls_port = free_port(), free_port()
    cert, key = certificate(tmpdir_path, days_to=days_to)
    base = turn_base().replace('relay_ipv4 = "127.0.0.1"\n', f'relay_ipv4 = "127.0.0.1"\nstatic_auth_secrets = ["{REST_SECRET}"]\n')
    f = ferryd_factory(base + f"""
[[tls.certificate]]
certificate = "{cert}"
key = "{key}"
[signal]
enabled = true
allow_plaintext = true
token_secrets = ["{TOKEN_SECRET}"]
self_relay_urls = ["turn:localhost:{port}?transport=udp", "turns:localhost:{tls_port}?transport=tcp"]
""" + turn_listeners(udp=port, tcp=port, tls=tls_port))
    f.port, f.tls_port, f.cert = port, tls_port, cert
    return f


def probe(*args):
    r = subprocess.run([binary("ferry"), "probe", "--json", "--timeout", "2", *args], capture_output=True, text=True, timeout=60)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else None, r.stderr


def steps(report):
    return {(t["url"], s["name"]): s for t in report["targets"] for s in t["steps"]}


def test_probe_passes_against_a_healthy_ferryd(ferryd_factory, tmpdir_path):
    f = start(ferryd_factory, tmpdir_path)
    urls = [f"ws://127.0.0.1:{f.port}/v1/signal", f"wss://localhost:{f.tls_port}/v1/signal",
            f"turn:localhost:{f.port}", f"turn:localhost:{f.port}?transport=tcp", f"turns:localhost:{f.tls_port}?transport=tcp",
            f"stun:127.0.0.1:{f.port}"]
    # No TURN credentials given: the probe uses those the welcome hands out for host "localhost".
    rc, report, err = probe("--ca", f.cert, "--token-secret", TOKEN_SECRET, "--network", "ops", *urls)
    assert rc == 0, (report, err)
    s = steps(report)
    for u in urls[2:5]:
        assert s[(u, "turn allocate")]["ok"] and s[(u, "turn echo")]["ok"], u
        assert s[(u, "stun binding")]["mapped"].startswith("127.0.0.1:")
    cert = s[(urls[1], "tls certificate")]
    assert cert["verified"] and cert["names"] == ["localhost"] and 28 <= cert["days_left"] <= 30
    assert s[(urls[0], "signal")]["network"] == "ops"
    assert [r["region"] for r in s[(urls[0], "signal")]["relays"]] == ["self"]
    assert report["ranking"][0]["host"] in ("127.0.0.1", "localhost") and report["ranking"][0]["rtt_us"] > 0
    # Each echo really crossed the relay: three allocations, and packets out to the peer and back.
    assert f.metric("ferry_turn_allocations_created_total") == 3
    assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_peer"}) >= 3
    assert f.metric("ferry_turn_relayed_packets_total", {"direction": "to_client"}) >= 3


def test_probe_names_what_fails(ferryd_factory, tmpdir_path):
    f = start(ferryd_factory, tmpdir_path)
    # Wrong TURN credentials: the allocation fails with 401, the binding before it still passes.
    rc, report, _ = probe("--user", "test", "--password", "wrong", f"turn:127.0.0.1:{f.port}")
    s = steps(report)
    assert rc == 1 and not report["ok"]
    assert s[(f"turn:127.0.0.1:{f.port}", "stun binding")]["ok"]
    assert "401" in s[(f"turn:127.0.0.1:{f.port}", "turn allocate")]["detail"]
    # A wrong signaling token.
    rc, report, _ = probe("--token-secret", "not-the-secret-000", f"ws://127.0.0.1:{f.port}/v1/signal")
    assert rc == 1 and steps(report)[(f"ws://127.0.0.1:{f.port}/v1/signal", "signal")]["detail"] == "refused: auth_failed"
    # An unverifiable certificate (no --ca: the system's CAs do not know it) fails unless --insecure.
    url = f"turns:localhost:{f.tls_port}?transport=tcp"
    rc, report, _ = probe("--secret", REST_SECRET, url)
    assert rc == 1 and "self-signed" in steps(report)[(url, "tls certificate")]["detail"]
    assert probe("--secret", REST_SECRET, "--insecure", url)[0] == 0
    # Stopped: nothing answers, and the exit status says so.
    f.stop()
    rc, report, _ = probe("--secret", REST_SECRET, f"turn:127.0.0.1:{f.port}", f"turn:127.0.0.1:{f.port}?transport=tcp")
    s = steps(report)
    assert rc == 1
    assert "no answer" in s[(f"turn:127.0.0.1:{f.port}", "stun binding")]["detail"]
    assert "refused" in s[(f"turn:127.0.0.1:{f.port}?transport=tcp", "connect")]["detail"]


def test_probe_fails_on_an_expired_certificate(ferryd_factory, tmpdir_path):
    f = start(ferryd_factory, tmpdir_path, days_to=-2)
    url = f"turns:localhost:{f.tls_port}?transport=tcp"
    for extra in ([], ["--insecure"]):
        rc, report, _ = probe("--ca", f.cert, "--secret", REST_SECRET, *extra, url)
        cert = steps(report)[(url, "tls certificate")]
        assert rc == 1 and not cert["ok"], extra
        assert "EXPIRED 2 days ago" in cert["detail"] or "EXPIRED 1 days ago" in cert["detail"], cert
    assert "certificate has expired" in steps(probe("--ca", f.cert, "--secret", REST_SECRET, url)[1])[(url, "tls certificate")]["detail"]
