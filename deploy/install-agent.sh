#!/usr/bin/env bash
# Installs the pmcluster agent on this Debian host as a systemd service: the binary, a system
# user, its config, its certificates and the unit; then enables and starts it.
#
#   sudo deploy/install-agent.sh --coordinator URL[,URL] [options]
#
#   --coordinator URLS   coordinator(s), comma-separated (https:// with the three TLS files)
#   --node-name NAME     this node's name (default: hostname)
#   --ca FILE            the cluster CA (ca.pem)            } all three or none; made with
#   --cert FILE          this agent's certificate            } `pmcluster certs issue agent NAME`
#   --key FILE           this agent's key                    }
#   --label KEY=VALUE    a node label (repeatable)
#   --advertise-address ADDR   the address the cluster should use for this node's instances
#   --bin FILE           the agent binary (default: pmcluster-agent next to this script, else
#                        target/release/pmcluster-agent of this checkout)
#   --user NAME          the system user the agent and its instances run as (default pmcluster)
#   --run-as-root        run the agent as root instead: needed when apps set `user` to run as
#                        other accounts; the system user is still made (it owns the config)
#   --no-start           install and enable, but do not start or restart
#
# Idempotent: each file is written only when its content or mode differs, and the agent is
# restarted only when something it reads changed. A second run with the same arguments changes
# nothing and says so. Restarting the agent leaves its instances running (KillMode=process).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
coordinator=""
node_name="$(hostname)"
bin=""
ca="" cert="" key=""
labels=()
advertise=""
user="pmcluster"
as_root=0
start=1

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --coordinator) coordinator="$2"; shift 2 ;;
    --node-name) node_name="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --ca) ca="$2"; shift 2 ;;
    --cert) cert="$2"; shift 2 ;;
    --key) key="$2"; shift 2 ;;
    --label) labels+=("$2"); shift 2 ;;
    --advertise-address) advertise="$2"; shift 2 ;;
    --user) user="$2"; shift 2 ;;
    --run-as-root) as_root=1; shift ;;
    --no-start) start=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

fail() { echo "error: $*" >&2; exit "${code:-1}"; }
[ -n "$coordinator" ] || code=2 fail "--coordinator URL is required"
tls=0
if [ -n "$ca$cert$key" ]; then
  [ -n "$ca" ] && [ -n "$cert" ] && [ -n "$key" ] || code=2 fail "--ca, --cert and --key go together"
  for f in "$ca" "$cert" "$key"; do [ -r "$f" ] || fail "$f is not readable"; done
  tls=1
fi
# Values end up in an EnvironmentFile: refuse what would need quoting there.
for v in "$coordinator" "$node_name" "$advertise" "$user" ${labels[@]+"${labels[@]}"}; do
  case "$v" in *[[:space:]\"\'\\\$\`]*) code=2 fail "unsupported character in '$v'" ;; esac
done
if [ -z "$bin" ]; then
  if [ -x "$here/pmcluster-agent" ]; then bin="$here/pmcluster-agent"
  else bin="$here/../target/release/pmcluster-agent"; fi
fi
[ -x "$bin" ] || fail "$bin not found; build it with: cargo build --release -p pmcluster-agent"
[ "$(id -u)" -eq 0 ] || fail "run as root (it writes /usr/local/bin, /etc and the unit)"
command -v systemctl >/dev/null || fail "systemctl not found: this script installs a systemd unit"
export PATH="$PATH:/usr/sbin:/sbin"

changed=()       # what this run changed, for the summary
restart=0        # whether the running agent must be restarted to see a change

# Puts `src` at `dst` with `mode` and `owner:group` unless it is already so; returns 0 when
# something changed.
put() {
  local src="$1" dst="$2" mode="$3" owner="$4"
  if [ -f "$dst" ] && cmp -s "$src" "$dst" \
     && [ "$(stat -c '%a %U:%G' "$dst")" = "$mode $owner" ]; then
    return 1
  fi
  install -D -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$src" "$dst.pmcluster-new"
  mv -f "$dst.pmcluster-new" "$dst"
  changed+=("$dst")
  return 0
}

# Same as `put` for content given on stdin.
put_text() {
  local tmp rc=0
  tmp=$(mktemp)
  cat > "$tmp"
  put "$tmp" "$@" || rc=$?
  rm -f "$tmp"
  return "$rc"
}

# The system user: no login, no home to speak of. It owns the agent's state, and the group
# lets it read the config and key.
if ! getent group "$user" >/dev/null; then
  groupadd --system "$user"
  changed+=("group $user")
fi
if ! getent passwd "$user" >/dev/null; then
  useradd --system --gid "$user" --home-dir /var/lib/pmcluster --no-create-home \
    --shell /usr/sbin/nologin --comment "pmcluster agent" "$user"
  changed+=("user $user")
fi

put "$bin" /usr/local/bin/pmcluster-agent 755 root:root && restart=1
if [ -d /etc/pmcluster ]; then
  [ "$(stat -c '%a %U:%G' /etc/pmcluster)" = "750 root:$user" ] || { chmod 750 /etc/pmcluster; chown "root:$user" /etc/pmcluster; changed+=(/etc/pmcluster); }
else
  install -d -m 750 -o root -g "$user" /etc/pmcluster
  changed+=(/etc/pmcluster)
fi

if [ "$tls" = 1 ]; then
  put "$ca" /etc/pmcluster/ca.pem 644 root:root && restart=1
  put "$cert" /etc/pmcluster/agent.pem 644 root:root && restart=1
  put "$key" /etc/pmcluster/agent-key.pem 640 "root:$user" && restart=1
fi

args=""
for l in ${labels[@]+"${labels[@]}"}; do args="$args --label $l"; done
# Built in a variable, not piped: `put` must run in this shell to record what it changed.
config=$(
  echo "# Written by install-agent.sh; a rerun with other arguments rewrites it."
  echo "PMCLUSTER_COORDINATOR=$coordinator"
  echo "PMCLUSTER_NODE_NAME=$node_name"
  [ -z "$advertise" ] || echo "PMCLUSTER_ADVERTISE_ADDRESS=$advertise"
  if [ "$tls" = 1 ]; then
    echo "PMCLUSTER_CA=/etc/pmcluster/ca.pem"
    echo "PMCLUSTER_TLS_CERT=/etc/pmcluster/agent.pem"
    echo "PMCLUSTER_TLS_KEY=/etc/pmcluster/agent-key.pem"
  fi
  echo "PMCLUSTER_AGENT_ARGS=${args# }"
)
put_text /etc/default/pmcluster-agent 640 "root:$user" <<<"$config" && restart=1

reload=0
put "$here/systemd/pmcluster-agent.service" /etc/systemd/system/pmcluster-agent.service 644 root:root \
  && { reload=1; restart=1; }
dropin=/etc/systemd/system/pmcluster-agent.service.d/user.conf
if [ "$as_root" = 1 ]; then
  if [ -e "$dropin" ]; then
    rm -f "$dropin"
    changed+=("$dropin (removed)")
    reload=1; restart=1
  fi
else
  put_text "$dropin" 644 root:root <<EOF_DROPIN && { reload=1; restart=1; }
# Written by install-agent.sh: the agent and its instances run as this user.
[Service]
User=$user
Group=$user
EOF_DROPIN
fi
[ "$reload" = 0 ] || systemctl daemon-reload

if ! systemctl is-enabled --quiet pmcluster-agent 2>/dev/null; then
  systemctl enable --quiet pmcluster-agent
  changed+=("enabled pmcluster-agent")
fi
if [ "$start" = 1 ]; then
  if ! systemctl is-active --quiet pmcluster-agent; then
    systemctl start pmcluster-agent
    changed+=("started pmcluster-agent")
  elif [ "$restart" = 1 ]; then
    # Only the agent restarts: its instances keep running and are adopted again.
    systemctl restart pmcluster-agent
    changed+=("restarted pmcluster-agent")
  fi
fi

if [ "${#changed[@]}" -eq 0 ]; then
  echo "pmcluster-agent: already installed as asked; nothing changed"
else
  echo "pmcluster-agent: node $node_name reports to $coordinator; changed:"
  printf '  %s\n' "${changed[@]}"
fi
