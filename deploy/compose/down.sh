#!/usr/bin/env bash
# Removes what up.sh made: the compose project's containers, network and volumes, and its state
# dir (certificates). The images stay for the next up.sh; --images removes them too.
#
#   deploy/compose/down.sh [--images]
#
# Same environment as up.sh (PMCLUSTER_COMPOSE_PROJECT, PMCLUSTER_COMPOSE_STATE,
# PMCLUSTER_IMAGE_TAG).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
images=0
while [ $# -gt 0 ]; do
  case "$1" in
    --images) images=1; shift ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
project="${PMCLUSTER_COMPOSE_PROJECT:-pmcluster}"
state="${PMCLUSTER_COMPOSE_STATE:-$here/.state}"
# The compose file refuses to load without it; its value does not matter for `down`.
export PMCLUSTER_COMPOSE_PKI="$state/pki"

docker-compose -p "$project" -f "$here/docker-compose.yml" down --volumes --remove-orphans --timeout 10
rm -rf "$state"
if [ "$images" = 1 ]; then
  for i in pmcluster-coordinator pmcluster-agent pmcluster-etcd pmcluster-haproxy pmcluster-systemd; do
    docker image rm "$i:${PMCLUSTER_IMAGE_TAG:-latest}" >/dev/null 2>&1 || true
  done
fi
echo "pmcluster compose project $project removed"
