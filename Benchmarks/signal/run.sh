#!/usr/bin/env bash
# Signaling benchmark (run.py): builds ferryd (release) and runs it. Extra arguments go to run.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python3 -c "import websockets, cryptography, picows, uvloop" 2>/dev/null || python3 -m pip install -q websockets cryptography picows uvloop
(cd "$root" && swift build -c release --product ferryd >/dev/null)
exec python3 "$here/run.py" --ferryd "$root/.build/release/ferryd" "$@"
