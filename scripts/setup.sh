#!/usr/bin/env bash
# Installs what building and testing Ferry needs on Debian (run as root, or with sudo present).
#   scripts/setup.sh build   — the C libraries ferryd links (OpenSSL, libsystemd, cnats, libbpf) and pkg-config
#   scripts/setup.sh test    — also the real clients the tests drive (curl, coturn's tools,
#                              systemd-socket-activate, Python's pytest and aioice)
# Idempotent: apt-get runs only when a package is missing.
set -euo pipefail
mode=${1:-test}
apt_pkgs=(pkg-config libssl-dev libsystemd-dev libnats-dev libbpf-dev)
pip_pkgs=()
if [ "$mode" = test ]; then
  # wireguard-go, wireguard-tools, nftables, ping and iperf3: the tunnel tests in network namespaces.
  # chromium: the status page test (headless, over the DevTools protocol).
  # prometheus: promtool for the alert rules (test_monitoring.py); lintian and dpkg-dev: the package test.
  # nats-server and nats-py: signaling across instances (test_nats.py starts its own clusters).
  apt_pkgs+=(curl systemd coturn gcc openssl iproute2 ethtool bpftool wireguard-go wireguard-tools nftables iputils-ping iperf3 chromium prometheus lintian dpkg-dev adduser nats-server)
  pip_pkgs+=(pytest aioice websockets pyjwt cryptography nats-py)
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "$mode" = test ]; then
  # No man-db index rebuild after each install (apt here, dpkg in the package test): minutes of
  # CI time spent on an index nobody searches on a test machine.
  echo "man-db man-db/auto-update boolean false" | $sudo debconf-set-selections
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's prometheus package starts a server on :9090 where systemd runs, ferryd's admin port:
  # only its promtool is wanted here.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
  fi
  # Likewise nats-server's own service: the tests start the servers they need.
  if [[ " ${missing[*]} " == *" nats-server "* ]] && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now nats-server >/dev/null 2>&1 || true
  fi
fi
if [ ${#pip_pkgs[@]} -gt 0 ]; then
  python3 -m pip install -q --disable-pip-version-check "${pip_pkgs[@]}" 2>&1 | grep -v "WARNING: Running pip as the 'root' user" || true
fi
