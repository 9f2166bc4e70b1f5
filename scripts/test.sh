#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the multi-process integration tests.
# Usage: ./scripts/test.sh            (from anywhere in the repo)
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== build the binaries the integration tests run"
cargo build --workspace --bins --all-features
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-features 2>&1 | tee "$log" || status=$?
# The fuzz crate is a workspace of its own (fuzzing needs nightly), but the tests of its checks
# (every committed seed passes them) run on stable; sharing target/ reuses much of the build.
echo "== cargo test (the fuzz crate's checks)"
cargo test --manifest-path fuzz/Cargo.toml --target-dir target --lib --examples 2>&1 \
  | tee -a "$log" || status=$?
# A test that cannot run here (not root, no cgroups, no etcd) passes after printing
# `pmcluster-test-skip: TEST: REASON` (see agent/tests/it/skip.rs): list those, and count them as
# skipped, not passed. Matched anywhere in a line, as a test's stderr may land mid-line.
skips=$(grep -o 'pmcluster-test-skip: .*' "$log" || true)
n_skipped=$({ grep -o 'pmcluster-test-skip: ' "$log" || true; } | wc -l)
if [ "$n_skipped" -gt 0 ]; then
  echo "== skipped (could not run here)"
  echo "$skips"
fi
# One closing line for the whole run (cargo prints one per test binary, the last often a doc-test
# run with nothing in it).
awk -v skipped="$n_skipped" \
  '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
   END { printf "tests: %d passed, %d failed, %d skipped\n", p - skipped, f, skipped }' "$log"
exit "$status"
