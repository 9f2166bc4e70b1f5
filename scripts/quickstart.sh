#!/usr/bin/env bash
# Builds pmcluster, starts a local cluster (one coordinator, one agent) with the embedded defaults,
# runs the bundled test app as 2 instances, scales it to 4, and lists it.
# Usage: ./scripts/quickstart.sh        Stop everything with: target/release/pmcluster down
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins
bin=target/release
export PATH="$PWD/$bin:$PATH"

pmcluster up
# Ports 4100-4199 on this machine: instance i listens on 4100+i.
pmcluster start "$PWD/$bin/pmcluster-testapp" --name web --instances 2 --port 4100-4199
pmcluster scale web 4
# Wait (up to 30 s) until all four answer, then show them.
for _ in $(seq 1 60); do
  # grep finds nothing while every instance is still starting: not an error here.
  online=$({ pmcluster list web -o json | grep -o '"status": *"online"' || true; } | wc -l)
  [ "$online" -ge 4 ] && break
  sleep 0.5
done
pmcluster list web
echo
echo "Try: curl -s localhost:4102/health    pmcluster logs web    pmcluster nodes"
echo "Stop everything: $bin/pmcluster down"
