#!/usr/bin/env bash
# Builds the generator, the sink and the C forwarder, builds ferryd in release mode, installs
# coturn if missing, and runs the native-relay benchmark. Extra arguments go to run.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/Benchmarks/out"
mkdir -p "$out"
command -v turnserver >/dev/null || "$root/scripts/setup.sh" test
gcc -O2 -Wall -o "$out/tgen" "$root/Benchmarks/turn-relay/tgen.c"
for p in cforward loadgen sink; do gcc -O2 -Wall -o "$out/$p" "$root/Benchmarks/udp-forward/$p.c"; done
(cd "$root" && swift build -c release --product ferryd >/dev/null)
exec python3 "$here/run.py" --ferryd "$root/.build/release/ferryd" --bindir "$out" "$@"
