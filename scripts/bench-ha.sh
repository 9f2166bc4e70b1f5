#!/usr/bin/env bash
# The HA pair's figures (issue 11), on loopback with release builds:
#   - failover: kill -9 of the leader -> first write accepted through the CLI holding both
#     addresses (RUNS runs, default 10), and SIGTERM of the leader -> the same;
#   - `pmcluster scale` wall time with the embedded store and with the etcd pair.
# Needs etcd (Debian's etcd-server) and protoc (protobuf-compiler) for the etcd build.
# Usage: ./scripts/bench-ha.sh            (RUNS=10 SCALES=50 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
SCALES=${SCALES:-50}

command -v etcd >/dev/null || { echo "bench-ha: needs etcd (apt-get install etcd-server)"; exit 1; }
cargo build --release --features pmcluster-coordinator/etcd --bins -q
B=$PWD/target/release
WORK=$(mktemp -d /tmp/pmcluster-bench-ha.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # The agents' instances: each stops its own on SIGTERM (--stop-instances-on-exit).
  for a in ${AGENT:-} ${AGENT_EMB:-}; do kill -TERM "$a" 2>/dev/null || true; done
  [ -n "${AGENT:-}${AGENT_EMB:-}" ] && sleep 1
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s%N; }
ms() { echo "scale=1; ($2 - $1) / 1000000" | bc; }
stats() { python3 -c 'import sys,statistics as s; v=[float(x) for x in sys.argv[1:]]; print(f"median {s.median(v):.1f} ms, min {min(v):.1f}, max {max(v):.1f} (n={len(v)})")' "$@"; }

EC=$(free_port); EP=$(free_port)
etcd --name b --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$EC" \
  --advertise-client-urls "http://127.0.0.1:$EC" --listen-peer-urls "http://127.0.0.1:$EP" \
  --initial-advertise-peer-urls "http://127.0.0.1:$EP" --initial-cluster "b=http://127.0.0.1:$EP" \
  >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
until etcdctl --endpoints "http://127.0.0.1:$EC" endpoint health >/dev/null 2>&1; do sleep 0.1; done

P=($(free_port) $(free_port))
URLS="http://127.0.0.1:${P[0]},http://127.0.0.1:${P[1]}"
declare -A CPID
start_coord() {
  "$B/pmcluster-coordinator" --listen "127.0.0.1:${P[$1]}" --store etcd --lease-ttl 2s \
    --etcd-endpoints "http://127.0.0.1:$EC" --etcd-prefix /bench >"$WORK/c$1.log" 2>&1 &
  CPID[$1]=$!
  PIDS+=($!)
  until grep -q "listening on" "$WORK/c$1.log"; do sleep 0.02; done
}
CLI() { "$B/pmcluster" --coordinator "$URLS" "$@"; }
leader() {
  for i in 0 1; do
    # Exit 3 (no leader, or a store slow to answer) still prints the JSON read below.
    if { "$B/pmcluster" --coordinator "http://127.0.0.1:${P[$i]}" status -o json 2>/dev/null || true; } |
      python3 -c 'import json,sys; v=json.load(sys.stdin); sys.exit(0 if any(c["answered"] and c["role"]=="leader" for c in v["coordinators"]) else 1)' 2>/dev/null; then
      echo "$i"; return
    fi
  done
  echo none
}
wait_leader() { until [ "$(leader)" != none ]; do sleep 0.05; done; leader; }

start_coord 0; wait_leader >/dev/null; start_coord 1
"$B/pmcluster-agent" --coordinator "$URLS" --node-name bench --data-dir "$WORK/agent" \
  --stop-instances-on-exit >"$WORK/agent.log" 2>&1 &
AGENT=$!
until CLI nodes 2>/dev/null | grep -q ready; do sleep 0.1; done
CLI start "sleep 100000" --name s --instances 2 >/dev/null
pids_of_s() { CLI list s -o json | python3 -c 'import json,sys; print(sorted(i["pid"] for i in json.load(sys.stdin) if i.get("pid")))'; }
# `start` answers once the instances are placed; their pids come with the agent's next report.
both_pids() { # waits up to 10 s for both instances' pids, as the agent reports them
  local pids
  for _ in $(seq 100); do
    pids=$(pids_of_s)
    [ "$(echo "$pids" | tr -cd , | wc -c)" -eq 1 ] && break
    sleep 0.1
  done
  echo "$pids"
}
pids_before=$(both_pids)

gone() { # $1 = port: wait until nothing listens there (the killed coordinator released it)
  while ss -ltn "sport = :$1" | grep -q LISTEN; do sleep 0.01; done
}

RESULT=""
failover() { # $1 = signal; sets RESULT (not run in a subshell: the coordinators are ours)
  local out=()
  for run in $(seq "$RUNS"); do
    local l; l=$(wait_leader)
    local t0; t0=$(now)
    kill "-$1" "${CPID[$l]}"
    local n=$(( run % 2 + 2 ))
    local deadline=$(( $(now) + 30000000000 ))
    until CLI scale s "$n" >/dev/null 2>&1; do
      [ "$(now)" -lt "$deadline" ] || { echo "no write accepted within 30 s" >&2; exit 1; }
    done
    out+=("$(ms "$t0" "$(now)")")
    gone "${P[$l]}"
    start_coord "$l"   # back as the standby
  done
  RESULT=$(stats "${out[@]}")
}
echo "== kill -9 of the leader -> first accepted write (CLI with both addresses), lease TTL 2 s"
failover KILL
echo "   $RESULT"
echo "== SIGTERM of the leader -> first accepted write"
failover TERM
echo "   $RESULT"
CLI scale s 2 >/dev/null
sleep 3
# After a takeover the agent registers again and reports within its heartbeat.
pids_after=$(both_pids)
echo "== instance pids before and after $((2 * RUNS)) failovers (index 0-1): $pids_before -> $pids_after"

scale_times() {
  local out=()
  for i in $(seq "$SCALES"); do
    local t0; t0=$(now)
    "$B/pmcluster" --coordinator "$1" scale s $(( i % 2 + 2 )) >/dev/null
    out+=("$(ms "$t0" "$(now)")")
  done
  stats "${out[@]}"
}
echo "== pmcluster scale, wall time, etcd pair (CLI given the leader first)"
l=$(wait_leader)
echo "   $(scale_times "http://127.0.0.1:${P[$l]}")"

EMB=$(free_port)
"$B/pmcluster-coordinator" --listen "127.0.0.1:$EMB" --data-dir "$WORK/embedded" >"$WORK/emb.log" 2>&1 &
PIDS+=($!)
until grep -q "listening on" "$WORK/emb.log"; do sleep 0.02; done
# Set up as the pair is: one agent, the app at two instances, so that each scale also plans,
# places and tells an agent.
"$B/pmcluster-agent" --coordinator "http://127.0.0.1:$EMB" --node-name bench-embedded \
  --data-dir "$WORK/agent-embedded" --stop-instances-on-exit >"$WORK/agent-embedded.log" 2>&1 &
AGENT_EMB=$!
until "$B/pmcluster" --coordinator "http://127.0.0.1:$EMB" nodes 2>/dev/null | grep -q ready; do sleep 0.1; done
"$B/pmcluster" --coordinator "http://127.0.0.1:$EMB" start "sleep 100000" --name s --instances 2 >/dev/null
echo "== pmcluster scale, wall time, embedded store (one agent, as the pair)"
echo "   $(scale_times "http://127.0.0.1:$EMB")"
