#!/usr/bin/env bash
# pmcluster's agent against supervisord and PMDaemon, the same scenarios in one run, so that each
# figure is a ratio from one machine at one time (see bench/supervisors/bench.py for what is
# measured and how). Loopback only; takes about 5 minutes (3 x a 60 s idle window).
#
# Usage: ./scripts/bench-supervisors.sh [--quick]
#   --quick             5 crash samples and a 10 s idle window (a smoke run, not a result)
#   PMDAEMON_ROOT=DIR   where `cargo install pmdaemon` goes (default target/bench-tools)
set -euo pipefail
cd "$(dirname "$0")/.."

samples=20
idle=60
if [ "${1:-}" = "--quick" ]; then
  samples=5
  idle=10
fi

echo "== building pmcluster (release)"
cargo build --release -p pmcluster-agent -p pmcluster-coordinator -p pmcluster-cli \
  -p pmcluster-testapp

echo "== supervisord (Debian package supervisor; a private instance is started, not the service)"
if ! command -v supervisord > /dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    apt-get install -y supervisor > /dev/null 2>&1 ||
      { apt-get update > /dev/null 2>&1 && apt-get install -y supervisor > /dev/null 2>&1; } ||
      echo "apt-get install supervisor failed"
  fi
fi
command -v supervisord || echo "supervisord not available: it is skipped"

echo "== PMDaemon (cargo install pmdaemon, 25 minutes at most)"
pmd_root=${PMDAEMON_ROOT:-target/bench-tools}
pmd_note=""
if [ ! -x "$pmd_root/bin/pmdaemon" ]; then
  mkdir -p "$pmd_root"
  if ! timeout 1500 cargo install pmdaemon --root "$pmd_root" > "$pmd_root/install.log" 2>&1; then
    pmd_note="cargo install pmdaemon failed or timed out; see $pmd_root/install.log"
    echo "$pmd_note"
  fi
fi
pmd_bin=""
if [ -x "$pmd_root/bin/pmdaemon" ]; then
  pmd_bin="$pmd_root/bin/pmdaemon"
  "$pmd_bin" --version
fi

echo "== running (crash samples: $samples, idle window: ${idle}s)"
python3 bench/supervisors/bench.py --bin-dir target/release --pmdaemon "$pmd_bin" \
  --pmdaemon-note "$pmd_note" --crash-samples "$samples" --idle-seconds "$idle"
