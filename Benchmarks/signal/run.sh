#!/usr/bin/env bash
# Signaling benchmark (run.py): builds ferryd and ferry (release) and the C floor, then runs the
# scenarios side by side. Needs nats-server (scripts/setup.sh test installs it). Extra arguments
# go to run.py (--peers, --rate, --duration, --memory-peers, --only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
command -v nats-server >/dev/null || "$root/scripts/setup.sh" test
("$root/scripts/build-release.sh" --product ferryd >/dev/null && "$root/scripts/build-release.sh" --product ferry >/dev/null)
out="$root/Benchmarks/out"
mkdir -p "$out"
cc -O2 -Wall -o "$out/signal-floor" "$here/floor.c" -lcrypto
exec python3 "$here/run.py" --ferryd "$root/.build/release/ferryd" --ferry "$root/.build/release/ferry" --floor "$out/signal-floor" "$@"
