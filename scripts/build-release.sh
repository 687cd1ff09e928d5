#!/usr/bin/env bash
# The release build every script makes (tests, CI, the package, dev.sh, the benchmarks), with one
# set of flags, so that whichever builds second (the package test after the test run's build)
# finds everything built instead of building it all again (3.5 minutes of every CI run):
# - the Swift runtime and Foundation linked in statically (a Debian machine has no Swift; the
#   package ships these binaries);
# - symbols bound at load (-z now: with the default RELRO the GOT is then read-only).
# Extra arguments go to swift build (for example --product ferryd).
set -euo pipefail
cd "$(dirname "$0")/.."
exec swift build -c release --static-swift-stdlib -Xlinker -z -Xlinker now "$@"
