#!/usr/bin/env bash
# TURN over TCP and TLS next to UDP, and idle TLS memory. Installs stunnel4 if missing, builds the
# generators and ferryd (release), runs run.py. Extra arguments go to run.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/Benchmarks/out"
mkdir -p "$out"
command -v stunnel4 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 >/dev/null; }
gcc -O2 -Wall -o "$out/streamgen" "$here/streamgen.c"
gcc -O2 -Wall -o "$out/tgen" "$root/Benchmarks/turn-relay/tgen.c"
gcc -O2 -Wall -o "$out/sink" "$root/Benchmarks/udp-forward/sink.c"
("$root/scripts/build-release.sh" --product ferryd >/dev/null)
exec python3 "$here/run.py" --ferryd "$root/.build/release/ferryd" --bindir "$out" "$@"
