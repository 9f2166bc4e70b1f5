#!/usr/bin/env bash
# Debian packages the test suite needs, installed with apt when missing. Run by scripts/test.sh,
# and by .ci/run first so that CI knows what this machine has before it decides what may skip.
set -euo pipefail

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
# The rolling-update test puts a real HAProxy in front of the instances.
if ! command -v haproxy >/dev/null 2>&1 && ! [ -x /usr/sbin/haproxy ]; then
  echo "== installing haproxy (Debian package) for the rolling-update test"
  apt_install haproxy
fi
# The etcd store (feature `etcd`, built with --all-features): its client crate runs protoc at
# build time, and its tests start their own etcd.
if ! command -v etcd >/dev/null 2>&1 || ! command -v protoc >/dev/null 2>&1; then
  echo "== installing etcd and protoc (Debian packages) for the etcd store and its tests"
  apt_install etcd-server etcd-client protobuf-compiler libprotobuf-dev
fi
# The test hosts (tests/harness/hosts.rs): network namespaces and a bridge (ip), processes
# entered into them (nsenter), partitions (iptables), and HTTP from one host to another (curl).
if ! command -v ip >/dev/null 2>&1 || ! command -v iptables >/dev/null 2>&1 \
  || ! command -v nsenter >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
  echo "== installing iproute2, iptables, util-linux and curl (Debian packages) for the test hosts"
  apt_install iproute2 iptables util-linux curl
fi
# The deploy tests (tests/it/deploy.rs) build images from a Debian root file system
# (deploy/images/build.sh: debootstrap) and run the compose cluster (docker-compose, the v1 tool).
if ! command -v debootstrap >/dev/null 2>&1 && ! [ -x /usr/sbin/debootstrap ]; then
  echo "== installing debootstrap (Debian package) for the deploy images"
  apt_install debootstrap
fi
if command -v docker >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  echo "== installing docker-compose (Debian package) for the compose deploy test"
  apt_install docker-compose
fi
# `pmcluster monit` is tested in a real terminal: tmux (send-keys, capture-pane).
if ! command -v tmux >/dev/null 2>&1; then
  echo "== installing tmux (Debian package) for the monit test"
  apt_install tmux
fi
# The send test runs a Node.js app beside a Python one.
if ! command -v node >/dev/null 2>&1; then
  echo "== installing nodejs (Debian package) for the send test"
  apt_install nodejs
fi
# Python tests (the Python client in clients/python, the metrics test's Prometheus text parser)
# run in a virtualenv of their own under target/, so the system's Python stays as it is.
if ! command -v python3 >/dev/null 2>&1; then
  echo "== installing python3 (Debian packages) for the Python tests"
  apt_install python3 python3-venv python3-pip
fi
venv=target/pyenv
want="grpcio-tools==1.85.1 grpcio==1.85.1 prometheus-client setuptools>=70"
make_venv() {
  python3 -m venv "$venv" >/dev/null 2>&1 && "$venv/bin/pip" install -q $want
}
if ! [ -x "$venv/bin/python" ] || ! [ -f "$venv/.pmcluster-deps" ] \
  || [ "$(cat "$venv/.pmcluster-deps")" != "$want" ]; then
  echo "== making the Python virtualenv $venv ($want)"
  mkdir -p target
  # The marker goes first, so that a half-made venv cannot pass for a made one on the next run.
  rm -f "$venv/.pmcluster-deps"
  made=false
  if make_venv; then
    made=true
  else
    # Debian splits venv's ensurepip and pip out of python3 itself.
    echo "== installing python3-venv and python3-pip (Debian packages), then trying again"
    if apt_install python3-venv python3-pip && make_venv; then
      made=true
    fi
  fi
  if $made; then
    echo "$want" >"$venv/.pmcluster-deps"
  elif [ "${CI:-}" = "true" ]; then
    # CI requires `python` (.ci/run): fail here, where the cause is, not at the first test.
    echo "== could not make $venv (is PyPI reachable?)" >&2
    exit 1
  else
    echo "== could not make $venv: the Python tests will report a skip"
  fi
fi
