#!/usr/bin/env bash
# The tests under a sanitizer (docs/testing.md). Zero reports or it fails.
#   scripts/sanitize.sh address   one optimized ASan+LSan build (with -enable-testing for the
#                                 @testable unit tests) used for both halves: the unit tests, then
#                                 every integration test against its ferryd and ferry. Optimized so
#                                 that the tests that bound latency or loss measure the server,
#                                 not a debug build that is 10-20x slower.
#   scripts/sanitize.sh thread    unit tests under ThreadSanitizer (the event-loop and mailbox
#                                 tests run real threads)
#   scripts/sanitize.sh address --unit | --integration   one half only
# Builds go to .build-asan and .build-tsan. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
kind=${1:-address}; shift || true
part=all
case "${1:-}" in --unit) part=unit; shift ;; --integration) part=integration; shift ;; esac
scripts/setup.sh test
# The Swift runtime's crash backtracer would interleave with the sanitizers' reports.
export SWIFT_BACKTRACE=enable=no
# The linker of this toolchain warns once per ASan helper it cannot export ("Cannot export local
# symbol '__asan_...'"): harmless, and hundreds of lines; filtered from the build output.
quiet() { grep -v "Cannot export local symbol" || true; }
reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT

check_reports() {
  local found
  found=$(grep -l "ERROR: \(AddressSanitizer\|LeakSanitizer\|ThreadSanitizer\)\|WARNING: ThreadSanitizer\|runtime error:" "$reports"/* 2>/dev/null || true)
  if [ -n "$found" ]; then
    for f in $found; do echo "== $f"; cat "$f"; done >&2
    echo "sanitize: $(echo "$found" | wc -l) process(es) reported" >&2
    exit 1
  fi
}

case "$kind" in
  address)
    # Reports of every process (ferryd, ferry, the test runner) go to files, so one a test does
    # not look at still fails the run. Leak checking on; suppressions: compiled into the
    # binaries (Sources/CFerryLinux/shim.c) and the test runner's own (Tests/Sanitizers/lsan.supp).
    export ASAN_OPTIONS="detect_leaks=1:log_path=$reports/asan:detect_stack_use_after_return=1"
    export LSAN_OPTIONS="suppressions=$root/Tests/Sanitizers/lsan.supp"
    flags=(-c release --sanitize=address --scratch-path .build-asan -Xswiftc -enable-testing)
    swift build --build-tests "${flags[@]}" 2>&1 | quiet
    if [ "$part" != integration ]; then
      swift test --skip-build "${flags[@]}" 2>&1 | quiet
      check_reports
    fi
    if [ "$part" != unit ]; then
      FERRY_SANITIZER=address FERRY_BIN_DIR="$root/.build-asan/release" python3 -m pytest -q Tests/integration "$@"
      check_reports
    fi ;;
  thread)
    export TSAN_OPTIONS="log_path=$reports/tsan:halt_on_error=0"
    swift build --build-tests --sanitize=thread --scratch-path .build-tsan 2>&1 | quiet
    swift test --skip-build --sanitize=thread --scratch-path .build-tsan
    check_reports ;;
  *) echo "usage: scripts/sanitize.sh address|thread [--unit|--integration] [pytest args]" >&2; exit 2 ;;
esac
echo "sanitize: $kind: no report"
