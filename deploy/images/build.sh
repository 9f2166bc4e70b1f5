#!/usr/bin/env bash
# Builds the pmcluster container images without pulling anything: a minimal Debian root file
# system made with debootstrap (cached), the binaries added, then `docker import`.
#
#   deploy/images/build.sh [--debug | --bin-dir DIR] [--tag TAG] [--no-strip] [--mirror URL]
#                          [--suite S] [--force]
#
# Images (tag `latest`, or TAG; PMCLUSTER_IMAGE_TAG):
#   pmcluster-coordinator  coordinator (built with the etcd store) + CLI
#   pmcluster-agent        agent + CLI
#   pmcluster-etcd         Debian's etcd-server
#   pmcluster-haproxy      Debian's haproxy + the CLI (it keeps the backend current)
#   pmcluster-systemd      systemd as PID 1, for trying deploy/install-agent.sh on a fresh host
#
# Binaries come from target/release (built with `cargo build --release --all-features` when
# missing), or target/debug with --debug, or any DIR, without their debug info (--no-strip keeps
# it). Root file systems are cached as tarballs under target/images/ (PMCLUSTER_IMAGES_DIR),
# keyed by suite, mirror and package list; an image is re-imported only when its root file
# system or binaries changed, so a rerun takes seconds.
# Needs root (debootstrap), docker and debootstrap (scripts/deps.sh installs it).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${PMCLUSTER_IMAGES_DIR:-$repo/target/images}"
suite="bookworm"
bin_dir=""
profile="release"
force=0
strip=1
mirror="${PMCLUSTER_DEBIAN_MIRROR:-}"
tag="${PMCLUSTER_IMAGE_TAG:-latest}"

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile="debug"; shift ;;
    --release) profile="release"; shift ;;
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --mirror) mirror="$2"; shift 2 ;;
    --suite) suite="$2"; shift 2 ;;
    --force) force=1; shift ;;
    --no-strip) strip=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || { echo "error: run as root (debootstrap needs it)" >&2; exit 1; }
command -v docker >/dev/null || { echo "error: docker not found" >&2; exit 1; }
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] \
  || { echo "error: debootstrap not found (apt-get install debootstrap, or scripts/deps.sh)" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"

# The mirror this host's apt already uses is the one known to be reachable from here.
if [ -z "$mirror" ]; then
  mirror=$(grep -hs -m1 -oE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | head -n 1 || true)
  [ -n "$mirror" ] || mirror=$(grep -hs -m1 -oE '^deb +[^ ]+' /etc/apt/sources.list | awk '{print $2}' | head -n 1 || true)
  [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
fi

if [ -z "$bin_dir" ]; then
  bin_dir="$repo/target/$profile"
  need_build=0
  for b in pmcluster-coordinator pmcluster-agent pmcluster; do
    [ -x "$bin_dir/$b" ] || need_build=1
  done
  if [ "$need_build" = 1 ]; then
    flag=""
    [ "$profile" = "release" ] && flag="--release"
    echo "== building the binaries ($profile, --all-features for the etcd store)"
    (cd "$repo" && cargo build $flag --all-features -p pmcluster-coordinator -p pmcluster-agent -p pmcluster-cli)
  fi
fi
for b in pmcluster-coordinator pmcluster-agent pmcluster; do
  [ -x "$bin_dir/$b" ] || { echo "error: $bin_dir/$b not found" >&2; exit 1; }
done

mkdir -p "$out/cache"

# One root file system per package set. minbase keeps only what apt and dpkg need; the rest of
# each image is exactly its --include list and their dependencies.
declare -A includes=(
  [base]="ca-certificates"
  [etcd]="ca-certificates,etcd-server"
  [haproxy]="ca-certificates,haproxy"
  [systemd]="ca-certificates,systemd,systemd-sysv,dbus,iproute2"
)

# Drops what no container reads (docs, man pages, translations, apt's indexes) to keep images
# small; dpkg still knows every package, so apt works in a derived image after `apt-get update`.
slim() {
  local root="$1"
  rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
  # The image's apt uses the same mirror as its build.
  echo "deb $mirror $suite main" > "$root/etc/apt/sources.list"
}

rootfs() {
  local name="$1" pkgs="${includes[$1]}" key tarball dir
  key=$(printf '%s\n' "v1" "$suite" "$mirror" "$pkgs" | sha256sum | cut -c1-12)
  tarball="$out/rootfs-$name-$key.tar"
  if [ -s "$tarball" ] && [ "$force" = 0 ]; then
    echo "$tarball"
    return
  fi
  dir="$out/rootfs-$name-$key.d"
  rm -rf "$dir"
  echo "== debootstrap $suite ($name: $pkgs) from $mirror" >&2
  if ! debootstrap --variant=minbase --include="$pkgs" --cache-dir="$out/cache" \
      "$suite" "$dir" "$mirror" > "$out/debootstrap-$name.log" 2>&1; then
    echo "error: debootstrap failed; see $out/debootstrap-$name.log" >&2
    tail -n 20 "$out/debootstrap-$name.log" >&2
    exit 1
  fi
  slim "$dir"
  tar --numeric-owner -C "$dir" -cf "$tarball.tmp" .
  rm -f "$tarball.list"
  mv "$tarball.tmp" "$tarball"
  rm -rf "$dir"
  # Older keys of this rootfs are never read again.
  find "$out" -maxdepth 1 -name "rootfs-$name-*.tar*" ! -name "$(basename "$tarball")*" -delete
  echo "$tarball"
}

# Imports `tarball` plus `extra` files (paths relative to the staging dir `stage`) as `image`,
# unless an image with the same content key exists already.
import() {
  local image="$1" tarball="$2" stage="$3" key have tmp old
  shift 3
  local changes=("$@")
  key=$( { basename "$tarball"; [ -n "$stage" ] && (cd "$stage" && find . -type f -print0 | sort -z | xargs -0 sha256sum); printf '%s\n' "${changes[@]}"; } | sha256sum | cut -c1-16)
  have=$(docker image inspect -f '{{ index .Config.Labels "pmcluster.build-key" }}' "$image:$tag" 2>/dev/null || true)
  if [ "$have" = "$key" ] && [ "$force" = 0 ]; then
    return
  fi
  tmp="$out/$image.tar"
  cp "$tarball" "$tmp"
  if [ -n "$stage" ]; then
    # docker import refuses a path twice, so only what the root file system lacks is appended
    # (e.g. ./usr/local/bin is there already, the binaries in it are not).
    [ -s "$tarball.list" ] || tar -tf "$tarball" | sed 's,/$,,' > "$tarball.list"
    (cd "$stage" && find . -mindepth 1 | sort) | { grep -vxF -f "$tarball.list" || true; } > "$out/add.list"
    tar --numeric-owner --owner=0 --group=0 --no-recursion -C "$stage" -rf "$tmp" -T "$out/add.list"
    rm -f "$out/add.list"
  fi
  local args=()
  for c in "${changes[@]}"; do args+=(--change "$c"); done
  args+=(--change "LABEL pmcluster.build-key=$key")
  echo "== docker import $image" >&2
  old=$(docker image inspect -f '{{.Id}}' "$image:$tag" 2>/dev/null || true)
  docker import "${args[@]}" "$tmp" "$image:$tag" >/dev/null
  rm -f "$tmp"
  # The image this one replaces, now untagged; kept while a container still uses it.
  [ -z "$old" ] || docker image rm "$old" >/dev/null 2>&1 || true
}

stage_bins() {
  local stage="$1"
  shift
  rm -rf "$stage"
  mkdir -p "$stage/usr/local/bin"
  for b in "$@"; do
    install -m 0755 "$bin_dir/$b" "$stage/usr/local/bin/$b"
    # The release profile keeps line tables for backtraces on the build host; an image is
    # smaller without them (a third of each binary).
    if [ "$strip" = 1 ] && command -v strip >/dev/null; then
      strip --strip-debug "$stage/usr/local/bin/$b"
    fi
  done
}

base=$(rootfs base)
etcd=$(rootfs etcd)
haproxy=$(rootfs haproxy)
systemd=$(rootfs systemd)

stage="$out/stage"
stage_bins "$stage/coordinator" pmcluster-coordinator pmcluster
mkdir -p "$stage/coordinator/var/lib/pmcluster/coordinator"
import pmcluster-coordinator "$base" "$stage/coordinator" \
  'ENV PMCLUSTER_DATA_DIR=/var/lib/pmcluster/coordinator' \
  'ENV PMCLUSTER_LISTEN=0.0.0.0:7450' \
  'EXPOSE 7450' \
  'ENTRYPOINT ["/usr/local/bin/pmcluster-coordinator"]'

stage_bins "$stage/agent" pmcluster-agent pmcluster
mkdir -p "$stage/agent/var/lib/pmcluster/agent"
import pmcluster-agent "$base" "$stage/agent" \
  'ENV PMCLUSTER_DATA_DIR=/var/lib/pmcluster/agent' \
  'ENTRYPOINT ["/usr/local/bin/pmcluster-agent"]'

import pmcluster-etcd "$etcd" "" \
  'ENTRYPOINT ["/usr/bin/etcd"]'

stage_bins "$stage/haproxy" pmcluster
import pmcluster-haproxy "$haproxy" "$stage/haproxy" \
  'ENTRYPOINT ["/usr/sbin/haproxy"]'

# systemd as PID 1 stops on SIGRTMIN+3, not SIGTERM; `docker import` cannot set STOPSIGNAL, so
# run it with --stop-signal RTMIN+3 (and --privileged, or cgroups mounted for it).
import pmcluster-systemd "$systemd" "" \
  'ENV container=docker' \
  'CMD ["/sbin/init"]'
rm -rf "$stage"

echo "== images (binaries from $bin_dir)"
for image in pmcluster-coordinator pmcluster-agent pmcluster-etcd pmcluster-haproxy pmcluster-systemd; do
  docker image inspect -f '{{.Size}}' "$image:$tag" \
    | awk -v n="$image" '{ printf "%-24s %6.1f MB\n", n, $1 / 1000000 }'
done
