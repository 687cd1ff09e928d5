"""The dashboard and alerts that ship in deploy/: Prometheus's own checker and rule unit tests
(`promtool`, Debian's prometheus package), and every metric and label they name checked against
docs/metrics.md and against what a running ferryd (TURN, TLS, signaling) exports."""
import json
import os
import re
import socket
import subprocess


from conftest import ROOT, free_port, http_get, listener, nats_env, turn_base

PROM = os.path.join(ROOT, "deploy", "prometheus")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "ferry-dashboard.json")
NOT_OURS = {"up"}
SUFFIXES = ("_bucket", "_sum", "_count")


def base_name(m):
    for s in SUFFIXES:
        if m.endswith(s) and not m.endswith("_total" + s):
            return m[: -len(s)]
    return m


def rule_exprs():
    text = open(os.path.join(PROM, "ferry-alerts.yml")).read()
    return [m.group(1) for m in re.finditer(r"^\s+expr: (.+)$", text, re.M)]


def dashboard_exprs():
    d = json.load(open(DASHBOARD))
    out = [t["expr"] for p in d["panels"] for t in p["targets"]]
    out += [v["definition"] for v in d["templating"]["list"] if v["type"] == "query"]
    return out


def names(expr):
    return {base_name(m) for m in re.findall(r"\b(ferry_[a-z0-9_]+|up)\b", expr)}


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    check = subprocess.run(["promtool", "check", "rules", "ferry-alerts.yml"], cwd=PROM, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 12 rules found" in check.stdout
    test = subprocess.run(["promtool", "test", "rules", "ferry-alerts.test.yml"], cwd=PROM, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    # Every alert has at least one test case in which it fires.
    alerts = re.findall(r"^\s+- alert: (\w+)$", open(os.path.join(PROM, "ferry-alerts.yml")).read(), re.M)
    tests = open(os.path.join(PROM, "ferry-alerts.test.yml")).read()
    for a in alerts:
        assert re.search(rf"alertname: {a}\n\s+exp_alerts:\n\s+- exp_labels", tests), f"{a} is never tested firing"


def test_every_metric_in_the_dashboard_and_rules_is_documented():
    doc = open(os.path.join(ROOT, "docs", "metrics.md")).read()
    documented = set(re.findall(r"^\| `(ferry_[a-z0-9_]+)`", doc, re.M))
    used = set().union(*(names(e) for e in rule_exprs() + dashboard_exprs())) - NOT_OURS
    assert len(used) > 20
    assert used <= documented, f"not in docs/metrics.md: {sorted(used - documented)}"


def test_the_dashboard_is_well_formed():
    d = json.load(open(DASHBOARD))
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and 'job="ferryd"' in t["expr"], (p["title"], t["expr"])


def test_the_names_and_labels_are_what_ferryd_exports(ferryd_factory):
    udp, tls, native = free_port(socket.SOCK_DGRAM), free_port(), free_port(socket.SOCK_DGRAM)
    # Signaling across instances too (its metrics exist whether NATS answers or not: none runs
    # here), and the native relay.
    base = turn_base().replace('relay_ipv4 = "127.0.0.1"\n', 'relay_ipv4 = "127.0.0.1"\nstatic_auth_secrets = ["monitoring-relay-secret-0123"]\n')
    f = ferryd_factory(base + "[tls]\nself_signed = true\n[signal]\nenabled = true\ntoken_secrets = [\"monitoring-secret-0123\"]\n"
                       + f"[signal.nats]\nservers = [\"nats://127.0.0.1:{free_port()}\"]\n"
                       + listener("turn-udp", udp) + listener("turn-tls", tls, "tls") + listener("relay-udp", native, service="relay"),
                       env=nats_env())
    _, body = http_get(f.admin_port, "/metrics")
    exported = {}
    for line in body.splitlines():
        m = re.match(r"^(ferry_[a-z0-9_]+)(?:\{([^}]*)\})? ", line)
        if m:
            labels = set(re.findall(r'(\w+)="', m.group(2) or ""))
            exported.setdefault(base_name(m.group(1)), set()).update(labels)
    for expr in rule_exprs() + dashboard_exprs():
        used = names(expr) - NOT_OURS
        missing = used - set(exported)
        assert not missing, f"{expr}: ferryd exports no {missing}"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in {l.strip() for l in group.split(",")} - {"instance", "job", "le"}:
                assert any(label in exported[n] for n in used), f"{expr}: no series of {used} has the label {label!r}"
