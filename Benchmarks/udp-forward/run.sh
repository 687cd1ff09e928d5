#!/usr/bin/env bash
# Builds the C reference forwarder, load generator and sink, builds ferryd in release mode, and
# runs the engine benchmark. Extra arguments go to run.py (--duration, --rounds, --sockets, --size).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/Benchmarks/out"
mkdir -p "$out"
for p in cforward loadgen sink; do gcc -O2 -Wall -o "$out/$p" "$here/$p.c"; done
("$root/scripts/build-release.sh" --product ferryd >/dev/null)
exec python3 "$here/run.py" --ferryd "$root/.build/release/ferryd" --bindir "$out" "$@"
