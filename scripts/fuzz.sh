#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer and AddressSanitizer (docs/testing.md).
#   scripts/fuzz.sh                 every target in turn, 60 s each
#   scripts/fuzz.sh TARGET [SECONDS] [libFuzzer flags...]
#   scripts/fuzz.sh --corpus-only   every target over its committed corpus and crash inputs, no mutation (CI)
#   scripts/fuzz.sh --merge TARGET  adds to the committed corpus the fewest inputs of .fuzz/corpus/TARGET
#                                   that reach every edge it does not (set-cover merge over edges, not
#                                   hit counts: keeps the committed corpus small), to commit
#   scripts/fuzz.sh --list
# New interesting inputs go to .fuzz/corpus/TARGET (seeded from Tests/FerryFuzzTests/Corpus/TARGET);
# a finding is written to .fuzz/crashes/TARGET/ and the run stops. Commit a fixed finding's input
# to Tests/FerryFuzzTests/Crashes/TARGET/ so the unit tests replay it forever.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scratch=.build-fuzz
bin="$scratch/release/ferry-fuzz"
seeds=Tests/FerryFuzzTests/Corpus
crashes=Tests/FerryFuzzTests/Crashes

build() {
  [ -n "${FERRY_FUZZ_SKIP_BUILD:-}" ] && return 0
  # SwiftPM's --sanitize=fuzzer compiles executables as libraries (libFuzzer brings main); the
  # explicit coverage flags are needed because this toolchain's driver does not add them itself
  # (checked: without them libFuzzer reports "no interesting inputs", the code is uninstrumented).
  swift build -c release --product ferry-fuzz --scratch-path "$scratch" \
    --sanitize=fuzzer --sanitize=address \
    -Xswiftc -DFUZZING -Xswiftc -sanitize-coverage=edge,trace-cmp,pc-table,inline-8bit-counters >&2
}


# The Swift runtime's own crash backtracer would race libFuzzer's and ASan's reports.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/Tests/Sanitizers/lsan.supp:print_suppressions=0}

# The target names, from their one list (FuzzTargets.all).
targets() { grep -o 'FuzzTarget(name: "[^"]*"' Sources/FerryFuzz/FuzzTarget.swift | cut -d'"' -f2; }

run() {
  local target=$1 seconds=$2; shift 2
  mkdir -p ".fuzz/corpus/$target" ".fuzz/crashes/$target"
  echo "== fuzz $target for ${seconds}s" >&2
  FERRY_FUZZ_TARGET=$target "$bin" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=4096 \
    -artifact_prefix=".fuzz/crashes/$target/" "$@" ".fuzz/corpus/$target" "$seeds/$target"
}

case "${1:-}" in
  --list) targets ;;
  --merge)
    target=$2
    build
    before=$(ls "$seeds/$target" | wc -l)
    FERRY_FUZZ_TARGET=$target "$bin" -set_cover_merge=1 -use_counters=0 "$seeds/$target" ".fuzz/corpus/$target" 2>&1 | grep -E "MERGE-OUTER: [0-9]+ new" >&2 || true
    echo "$target: $before → $(ls "$seeds/$target" | wc -l) committed inputs ($(du -sh "$seeds/$target" | cut -f1))" >&2 ;;
  --corpus-only)
    build
    for t in $(targets); do
      inputs=("$seeds/$t")
      [ -d "$crashes/$t" ] && inputs+=("$crashes/$t")
      echo "== $t: committed corpus and crash inputs" >&2
      # -runs=0 with directories: each input once, no mutation; any finding fails the run.
      log=$(mktemp)
      # -timeout=1: a per-input time limit, so a path gone quadratic (the JSON parser's duplicate
      # check once was) fails here on the committed many-keys inputs rather than in production.
      if ! FERRY_FUZZ_TARGET=$t "$bin" -runs=0 -timeout=1 "${inputs[@]}" >"$log" 2>&1; then
        cat "$log" >&2
        echo "fuzz: $t failed on a committed input" >&2
        exit 1
      fi
      grep -E "INITED|Done" "$log" >&2 || true
      rm -f "$log"
    done ;;
  "")
    build
    for t in $(targets); do run "$t" 60; done ;;
  *)
    target=$1; seconds=${2:-60}; shift; [ $# -gt 0 ] && shift
    build
    run "$target" "$seconds" "$@" ;;
esac
