#!/usr/bin/env bash
# pmcluster's agent against supervisord and PMDaemon, the same scenarios in one run, so that each
# figure is a ratio from one machine at one time (see bench/supervisors/bench.py for what is
# measured and how). Loopback only. One run per app: the compiled test app (about 5 minutes,
# 3 x a 60 s idle window), then the small Python and Node.js HTTP apps (about 6 minutes each).
#
# Usage: ./scripts/bench-supervisors.sh [--quick] [--app testapp|python|node]
#   --quick             5 crash samples and a 10 s idle window (a smoke run, not a result)
#   --app APP           only this app (default: all three, one after the other)
#   PMDAEMON_ROOT=DIR   where `cargo install pmdaemon` goes (default target/bench-tools)
set -euo pipefail
cd "$(dirname "$0")/.."

samples=20
idle=60
apps="testapp python node"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) samples=5 idle=10 ;;
    --app)
      case "${2:-}" in
        testapp | python | node) apps=$2 ;;
        *) echo "--app takes testapp, python or node, not '${2:-}'" >&2; exit 2 ;;
      esac
      shift ;;
    *) echo "unknown argument '$1'; usage: $0 [--quick] [--app testapp|python|node]" >&2; exit 2 ;;
  esac
  shift
done

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

for app in $apps; do
  if [ "$app" = node ] && ! command -v node > /dev/null; then
    echo "== app $app: skipped, node is not installed (apt-get install nodejs)"
    continue
  fi
  echo "== app $app: running (crash samples: $samples, idle window: ${idle}s)"
  python3 bench/supervisors/bench.py --bin-dir target/release --pmdaemon "$pmd_bin" \
    --pmdaemon-note "$pmd_note" --crash-samples "$samples" --idle-seconds "$idle" --app "$app"
done
