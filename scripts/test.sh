#!/usr/bin/env bash
# Runs every test: installs what they need, builds release (warnings are errors), runs the unit
# tests (swift test), then the integration tests (pytest) against the real binaries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh test
scripts/build-release.sh
swift test
FERRY_BIN_DIR="$root/.build/release" python3 -m pytest -q Tests/integration "$@"
