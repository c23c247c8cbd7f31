#!/usr/bin/env bash
# Runs every cargo-fuzz target in runtime/fuzz for SECONDS each (default 20: CI's smoke
# run), starting from the seeds in runtime/fuzz/seeds. A crash fails the script and
# leaves its input in runtime/fuzz/artifacts/<target>/; turn it into a regression test.
# Stable Rust: no sanitizer (-s none), libFuzzer's coverage guidance only.
set -euo pipefail
cd "$(dirname "$0")/../runtime"
seconds="${1:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --quiet --locked cargo-fuzz
fi

targets=(manifest admin_input keys)
cargo fuzz build -s none
for t in "${targets[@]}"; do
  corpus="$(mktemp -d)"
  log="$(mktemp)"
  echo "--- fuzz $t for ${seconds}s"
  status=0
  cargo fuzz run -s none "$t" "$corpus" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^stat::(number_of_executed_units|new_units_added)" "$log" || true
  rm -rf "$corpus"
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz target $t failed (exit $status); its input is in runtime/fuzz/artifacts/$t/" >&2
    exit 1
  fi
  rm -f "$log"
done
echo "fuzz smoke run: every target ran ${seconds}s without a crash"
