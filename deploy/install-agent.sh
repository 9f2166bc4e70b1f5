#!/usr/bin/env bash
# Installs the pmcluster agent on this host as a systemd service.
# Usage: sudo deploy/install-agent.sh --coordinator http://COORD:7450 [--node-name NAME] [--bin PATH]
set -euo pipefail

coordinator=""
node_name="$(hostname)"
bin="$(dirname "$0")/../target/release/pmcluster-agent"
while [ $# -gt 0 ]; do
  case "$1" in
    --coordinator) coordinator="$2"; shift 2 ;;
    --node-name) node_name="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$coordinator" ] || { echo "error: --coordinator URL is required" >&2; exit 2; }
[ -x "$bin" ] || { echo "error: $bin not found; build it with: cargo build --release" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "error: run as root (it writes /usr/local/bin and /etc)" >&2; exit 1; }

install -m 0755 "$bin" /usr/local/bin/pmcluster-agent
install -m 0644 "$(dirname "$0")/systemd/pmcluster-agent.service" /etc/systemd/system/
cat > /etc/default/pmcluster-agent <<CONF
PMCLUSTER_COORDINATOR=$coordinator
PMCLUSTER_NODE_NAME=$node_name
CONF
systemctl daemon-reload
systemctl enable --now pmcluster-agent
echo "pmcluster-agent installed; node $node_name reports to $coordinator"
