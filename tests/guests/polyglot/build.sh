#!/usr/bin/env bash
# Builds the Python and JavaScript wasi:http 0.2 test components (componentize-py,
# componentize-js) into tests/guests/target/polyglot/, unless they are newer than their
# sources. tests/setup.sh installs both tools.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../target/polyglot"
mkdir -p "$out"

fresh() { # output, sources...
  local o="$1"; shift
  [ -f "$o" ] || return 1
  for s in "$@"; do [ "$o" -nt "$s" ] || return 1; done
}

if ! fresh "$out/pyhello.wasm" "$here/python/app.py" "$here/build.sh"; then
  work="$(mktemp -d)"
  componentize-py -d "$here/wit" -w wasi:http/proxy bindings "$work/bindings" >/dev/null
  (cd "$here/python" && componentize-py -q -d "$here/wit" -w wasi:http/proxy \
    componentize app -p . -p "$work/bindings" -o "$out/pyhello.wasm")
  rm -rf "$work"
fi

if ! fresh "$out/jshello.wasm" "$here/js/app.js" "$here/build.sh"; then
  [ -d "$here/js/node_modules" ] || (cd "$here/js" && npm install --silent --no-audit --no-fund)
  (cd "$here/js" && node_modules/.bin/componentize-js app.js --wit "$here/wit" \
    -n wasi:http/proxy -o "$out/jshello.wasm" >/dev/null)
fi
ls "$out"/pyhello.wasm "$out"/jshello.wasm >/dev/null
