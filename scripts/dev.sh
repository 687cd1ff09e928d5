#!/usr/bin/env bash
# Runs ferryd on the built-in development default: loopback only, development credentials
# printed at start. Installs what the build needs, builds release, then runs in the foreground
# (Ctrl-C stops it). Extra arguments go to ferryd (for example --admin-address 127.0.0.1:9191).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh build
scripts/build-release.sh --product ferryd
scripts/build-release.sh --product ferry   # ferry probe checks the running server (README)
exec .build/release/ferryd "$@"
