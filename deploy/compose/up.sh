#!/usr/bin/env bash
# Starts the compose cluster (docker-compose.yml next to this file) and waits until it works: a
# coordinator leads and the three agents are registered. Builds the images first if missing.
#
#   deploy/compose/up.sh [--debug] [--build] [--timeout SECS]
#
#   --debug     build missing images from target/debug instead of target/release
#   --build     run deploy/images/build.sh even if the images exist (fast when nothing changed)
#   --timeout   how long to wait for the cluster (default 180)
#
# Environment: PMCLUSTER_COMPOSE_PROJECT (compose project name, default pmcluster),
# PMCLUSTER_COMPOSE_STATE (certificates and such, default .state next to this file),
# PMCLUSTER_LB_PORT (HAProxy on 127.0.0.1, default 8080), PMCLUSTER_LB_APP (default web),
# PMCLUSTER_IMAGE_TAG (the images' tag, default latest).
# Stop and remove it all with down.sh.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
build_args=()
force_build=0
timeout=180
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) build_args+=(--debug); shift ;;
    --build) force_build=1; shift ;;
    --timeout) timeout="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done

project="${PMCLUSTER_COMPOSE_PROJECT:-pmcluster}"
state="${PMCLUSTER_COMPOSE_STATE:-$here/.state}"
export PMCLUSTER_COMPOSE_PKI="$state/pki"
export PMCLUSTER_LB_PORT="${PMCLUSTER_LB_PORT:-8080}"
export PMCLUSTER_LB_APP="${PMCLUSTER_LB_APP:-web}"
export PMCLUSTER_IMAGE_TAG="${PMCLUSTER_IMAGE_TAG:-latest}"
tag="$PMCLUSTER_IMAGE_TAG"
compose() { docker-compose -p "$project" -f "$here/docker-compose.yml" "$@"; }

images=(pmcluster-coordinator pmcluster-agent pmcluster-etcd pmcluster-haproxy)
missing=0
for i in "${images[@]}"; do
  docker image inspect "$i:$tag" >/dev/null 2>&1 || missing=1
done
if [ "$missing" = 1 ] || [ "$force_build" = 1 ]; then
  "$here/../images/build.sh" --tag "$tag" ${build_args[@]+"${build_args[@]}"}
fi

# Certificates, made once with the CLI inside the coordinator image (no host binary needed).
pki="$PMCLUSTER_COMPOSE_PKI"
mkdir -p "$pki"
certs() {
  docker run --rm --network none --entrypoint /usr/local/bin/pmcluster \
    -v "$pki:/pki" "pmcluster-coordinator:$tag" certs "$@" --dir /pki >/dev/null
}
[ -f "$pki/ca.pem" ] || certs init
[ -f "$pki/coordinator.pem" ] || certs issue coordinator \
  --san c1 --san c2 --san e1 --san e2 --san e3 --san localhost --san 127.0.0.1
for a in a1 a2 a3; do
  [ -f "$pki/agent-$a.pem" ] || certs issue agent "$a"
done
[ -f "$pki/user-admin.pem" ] || certs issue user admin --role admin
[ -f "$pki/user-lb.pem" ] || certs issue user lb --role read

compose up -d --no-build

# The CLI inside c1 as the admin user (its environment names both coordinators and the certs).
cli() { compose exec -T c1 pmcluster "$@"; }
echo "== waiting (up to ${timeout}s) for a leader and three registered agents"
deadline=$((SECONDS + timeout))
while :; do
  nodes=$(cli nodes -o json 2>/dev/null || true)
  online=$(printf '%s' "$nodes" | grep -o '"status": *"ready"' | wc -l || true)
  if [ "$online" -ge 3 ]; then
    break
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "error: after ${timeout}s, ${online:-0} of 3 agents are ready; last answer:" >&2
    cli nodes >&2 || true
    compose ps >&2 || true
    compose logs --tail 20 >&2 || true
    exit 1
  fi
  sleep 1
done
cli status || true
cli nodes

cat <<NEXT

pmcluster is up (compose project $project).
  CLI (as admin, inside c1):  docker-compose -p $project -f $here/docker-compose.yml exec c1 pmcluster nodes
  an app behind HAProxy:       ... exec c1 pmcluster start "/srv/app --port \\\${PORT}" --name $PMCLUSTER_LB_APP --instances 3 --port 8000-8002
                               (the agent image is minimal Debian: put the app and its runtime in an
                               image FROM pmcluster-agent, or docker cp it into a1..a3; bind 0.0.0.0)
  HAProxy:                     curl http://127.0.0.1:$PMCLUSTER_LB_PORT/   (fronts app '$PMCLUSTER_LB_APP')
  certificates:                $pki (user-admin.pem for a CLI of your own)
  stop and remove everything:  $here/down.sh
NEXT
