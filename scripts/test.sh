#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the multi-process integration tests.
# Usage: ./scripts/test.sh            (from anywhere in the repo)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the suite needs, installed with apt when missing.
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
# The rolling-update test puts a real HAProxy in front of the instances.
if ! command -v haproxy >/dev/null 2>&1 && ! [ -x /usr/sbin/haproxy ]; then
  echo "== installing haproxy (Debian package) for the rolling-update test"
  apt_install haproxy
fi
# The etcd store (feature `etcd`, built here with --all-features): its client crate runs protoc
# at build time, and its tests start their own etcd.
if ! command -v etcd >/dev/null 2>&1 || ! command -v protoc >/dev/null 2>&1; then
  echo "== installing etcd and protoc (Debian packages) for the etcd store and its tests"
  apt_install etcd-server etcd-client protobuf-compiler libprotobuf-dev
fi

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
