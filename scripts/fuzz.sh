#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/fuzz_targets/*.rs) for SECONDS (default 30), one after
# another, and fails if any of them finds a crash. Needs a nightly toolchain (libFuzzer); without
# one it reports a skip and passes. Installs cargo-fuzz when missing.
# Usage: ./scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-30}
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS]   (seconds per target, default 30)" >&2
  exit 64
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "pmcluster-test-skip: fuzz: no nightly toolchain"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Overflow checks and debug assertions on (-a): an overflow is a crash to find. No sanitizer:
# the workspace denies unsafe code and the fuzzers look for panics, so ASan's instrumentation
# would only halve the executions. 16 codegen units (cargo-fuzz's default is 1): the build is
# most of a short run.
build=(--debug-assertions --sanitizer none --codegen-units 16)

targets=()
for f in fuzz/fuzz_targets/*.rs; do
  targets+=("$(basename "$f" .rs)")
done

echo "== cargo fuzz build (${#targets[@]} targets)"
cargo +nightly fuzz build "${build[@]}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
failed=()
for t in "${targets[@]}"; do
  # The corpus (fuzz/corpus/T, not committed) grows across runs; the committed seeds start it.
  mkdir -p "fuzz/corpus/$t"
  echo "== fuzz $t for ${secs}s"
  if cargo +nightly fuzz run "${build[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" >"$log" 2>&1; then
    # libFuzzer's closing lines: "#N DONE cov: ... exec/s: ..." and "Done N runs in S second(s)".
    grep -E '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs' "$log" | sed "s/^/fuzz: $t: /"
  else
    failed+=("$t")
    echo "fuzz: $t: FAILED; the end of its output:"
    tail -n 80 "$log"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashed: ${failed[*]} (inputs under fuzz/artifacts/; replay one with" \
    "cargo +nightly fuzz run ${build[*]} TARGET fuzz/artifacts/TARGET/FILE)"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${secs}s each, no crash"
