#!/usr/bin/env bash
# Builds the generator and the sink, builds ferryd in release mode, and runs the TURN-to-TURN
# benchmark (the short circuit against the kernel's path). Extra arguments go to run.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$root/Benchmarks/relay-build.sh"
exec python3 "$here/run.py" --ferryd "$root/.build/release/ferryd" --bindir "$out" "$@"
