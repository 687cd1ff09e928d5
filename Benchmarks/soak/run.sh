#!/usr/bin/env bash
# Soak (run.py): builds ferryd (release, or pass --ferryd PATH for a sanitizer build) and runs
# it under mixed load for --duration seconds (default 1800). Extra arguments go to run.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python3 -c "import websockets, cryptography" 2>/dev/null || python3 -m pip install -q websockets cryptography
case " $* " in
  *" --ferryd "*) exec python3 "$here/run.py" "$@" ;;
esac
("$root/scripts/build-release.sh" --product ferryd >/dev/null)
exec python3 "$here/run.py" --ferryd "$root/.build/release/ferryd" "$@"
