#!/usr/bin/env bash
# Builds the generator, the sink and the C forwarder, builds ferryd in release mode, installs
# coturn if missing, and runs the TURN relay benchmark. Extra arguments go to run.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$root/Benchmarks/relay-build.sh"
exec python3 "$here/run.py" --ferryd "$root/.build/release/ferryd" --bindir "$out" "$@"
