#!/usr/bin/env bash
# Every benchmark, in release mode; prints the figures the notes report.
# Usage: ./scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins
echo "== scheduler (pure placement throughput)"
cargo bench -p pmcluster-coordinator --bench scheduler
echo "== fake agents (1,000 agents, scale 0 -> 10,000 through gRPC)"
cargo bench -p pmcluster-coordinator --bench fake_agents
echo "== api load (unary round trip, Scale -> agent, 20 clients, app creation; fake agents)"
cargo bench -p pmcluster-coordinator --bench api_load
echo "== sustained control plane (1,000 fake agents x 20 instances reporting every second, 10 min)"
FAKE_AGENTS=1000 FAKE_AGENTS_INSTANCES=20000 FAKE_AGENTS_SUSTAIN_SECS=600 \
  cargo bench -p pmcluster-coordinator --bench fake_agents
echo "== autoscale simulation (step, ramp, sine, noisy traces: decision function vs the seeds' +1/-1)"
cargo bench -p pmcluster-coordinator --bench autoscale_sim
echo "== scale12 (3 real agents, scale web 12 until all answer /health)"
cargo bench -p pmcluster-tests --bench scale12
echo "== rollout12 (12 instances behind HAProxy: time against waves x min_healthy_time, failed requests)"
cargo bench -p pmcluster-tests --bench rollout12
echo "== tls (plaintext beside mutual TLS: RPC latency, CLI wall time, scale web 12)"
cargo bench -p pmcluster-tests --bench tls
echo "== reads (wall time of each CLI read at 4, 12 and 100 instances)"
cargo bench -p pmcluster-tests --bench reads
echo "== nodeloss (a host frozen or cut off: time until its indices are online elsewhere; needs root)"
cargo bench -p pmcluster-tests --bench nodeloss
