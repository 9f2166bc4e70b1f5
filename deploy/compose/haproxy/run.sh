#!/bin/sh
# HAProxy in front of one app, kept current the way the repo's load-balancer test does it:
# `pmcluster endpoints APP -o haproxy --watch` rewrites the backend file and reloads HAProxy
# (master-worker mode, USR2: new workers take over, old ones finish their requests), through
# reload.sh, which makes sure each reload lands.
set -eu
app="${PMCLUSTER_LB_APP:-web}"
dir=/run/pmcluster-lb
mkdir -p "$dir"
cat > "$dir/main.cfg" <<CFG
global
    master-worker
    pidfile $dir/haproxy.pid
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
frontend fe
    bind :8080
    default_backend $app
CFG
# Until the app has endpoints, a backend with no servers: HAProxy answers 503.
[ -s "$dir/backend.cfg" ] || printf 'backend %s\n' "$app" > "$dir/backend.cfg"
/usr/sbin/haproxy -W -f "$dir/main.cfg" -f "$dir/backend.cfg" &
haproxy=$!
# The watcher reconnects by itself once it has a stream (coordinator restart, failover); before
# that (coordinators still starting) it exits, and is started again a second later.
(
  while :; do
    pmcluster endpoints "$app" -o haproxy --watch --file "$dir/backend.cfg" \
      --exec "sh /etc/pmcluster-lb/reload.sh $haproxy" || true
    sleep 1
  done
) &
# This shell is PID 1: when it exits, the kernel ends the watcher too.
trap 'kill -TERM $haproxy 2>/dev/null; exit 0' TERM INT
wait $haproxy
