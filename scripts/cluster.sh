#!/usr/bin/env bash
# A local cluster for humans: NATS, a Cassandra node, 2 routers and 2 edges, all on
# 127.0.0.1, logs and pids under $DIR. Ctrl-C (or `scripts/cluster.sh stop`) stops it all.
#
#   scripts/cluster.sh            # build (release), start, print the edges' addresses, wait
#   scripts/cluster.sh stop       # stop a cluster started in the background
#
# Ports: NATS 4222 (monitoring 8222), Cassandra 19042, edges ws 8081/8082 (admin 9191/9192),
# routers admin 9291/9292. Tokens: messenger token --user alice --secret "$MESSENGER_JWT_SECRET".
# NATS runs with deploy/nats/nats.conf (per-role users and permissions); the cluster key and
# the role passwords are generated in $DIR (scripts/dev-cluster-auth.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${MESSENGER_CLUSTER_DIR:-${TMPDIR:-/tmp}/messenger-cluster}
CQL_PORT=19042
export MESSENGER_JWT_SECRET=${MESSENGER_JWT_SECRET:-local-cluster-secret-local-cluster-secret}
# Development mode: tokens minted from this secret carry no issuer or audience.
export MESSENGER_DEV=true
BIN=target/release/messenger
# shellcheck source=scripts/dev-cluster-auth.sh
source scripts/dev-cluster-auth.sh

stop() {
    for pidfile in "$DIR"/*.pid; do
        [[ -e $pidfile ]] || continue
        kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
    scripts/cassandra/cassandra.sh stop --port "$CQL_PORT" >/dev/null 2>&1 || true
}

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
}

case ${1:-} in
stop)
    stop
    exit 0
    ;;
-h | --help | help)
    usage
    exit 0
    ;;
"") ;;
*)
    echo "scripts/cluster.sh: unknown argument ${1@Q}" >&2
    usage >&2
    exit 64
    ;;
esac

mkdir -p "$DIR"
dev_cluster_auth "$DIR"
cargo build --release -p server --bin messenger
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
[[ -x $NATS ]] || { echo "nats-server not found: apt-get install nats-server" >&2; exit 1; }
scripts/cassandra/cassandra.sh start --port "$CQL_PORT"
trap stop EXIT INT TERM

"$NATS" -c deploy/nats/nats.conf -a 127.0.0.1 -p 4222 -m 8222 >"$DIR/nats.log" 2>&1 &
echo $! >"$DIR/nats.pid"
sleep 0.5

for i in 1 2; do
    MESSENGER_NATS_USER=router MESSENGER_NATS_PASSWORD=$MESSENGER_NATS_ROUTER_PASSWORD \
        "$BIN" router --admin-listen "127.0.0.1:929$i" --nats nats://127.0.0.1:4222 \
        --cql-nodes "127.0.0.1:$CQL_PORT" --cql-keyspace messenger >"$DIR/router$i.log" 2>&1 &
    echo $! >"$DIR/router$i.pid"
done
sleep 2
for i in 1 2; do
    MESSENGER_NATS_USER=edge MESSENGER_NATS_PASSWORD=$MESSENGER_NATS_EDGE_PASSWORD \
        "$BIN" edge --listen "127.0.0.1:808$i" --admin-listen "127.0.0.1:919$i" \
        --nats nats://127.0.0.1:4222 >"$DIR/edge$i.log" 2>&1 &
    echo $! >"$DIR/edge$i.pid"
done
sleep 1
cat <<MSG
cluster up (logs in $DIR):
  edges:   ws://127.0.0.1:8081  ws://127.0.0.1:8082   (metrics: http://127.0.0.1:9191/metrics, :9192)
  routers: http://127.0.0.1:9291/metrics  http://127.0.0.1:9292/metrics
  NATS:    nats://127.0.0.1:4222 (monitoring http://127.0.0.1:8222), users edge/router, passwords
           \$MESSENGER_NATS_EDGE_PASSWORD / \$MESSENGER_NATS_ROUTER_PASSWORD (deploy/nats/nats.conf)
  key:     $MESSENGER_CLUSTER_KEY_FILE (cluster key of every edge and router)
  token:   $BIN token --user alice --secret "\$MESSENGER_JWT_SECRET"   (secret: $MESSENGER_JWT_SECRET)
Ctrl-C stops everything.
MSG
wait
