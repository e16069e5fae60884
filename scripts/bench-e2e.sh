#!/usr/bin/env bash
# End-to-end numbers, standalone vs cluster, in one run on this machine:
#   1:1 send→deliver latency at a fixed send rate (open model), and
#   deliveries/s for a 1→N broadcast.
# Writes JSON lines to results/e2e-<date>.jsonl and prints them.
#
#   scripts/bench-e2e.sh [direct_rate] [broadcast_subscribers] [broadcast_rate] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-1000}
SUBS=${2:-10000}
BRATE=${3:-10}
SECS=${4:-10}
export MESSENGER_JWT_SECRET=bench-secret-bench-secret-bench-secret
mkdir -p results
OUT=results/e2e-$(date +%Y%m%d-%H%M%S).jsonl
cargo build --release -p server -p benches
BIN=target/release/messenger
BENCH=target/release/e2e-bench

run_scenarios() { # label edges
    "$BENCH" --label "$1" --edges "$2" direct --pairs 200 --rate "$RATE" --seconds "$SECS" | tee -a "$OUT"
    "$BENCH" --label "$1" --edges "$2" broadcast --subscribers "$SUBS" --rate "$BRATE" --seconds "$SECS" | tee -a "$OUT"
}

# Standalone, embedded store.
DATA=$(mktemp -d)
"$BIN" standalone --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:18090 --data-dir "$DATA" \
    --rate-requests-per-second 100000 --rate-request-burst 100000 --log warn >/dev/null 2>&1 &
PID=$!
sleep 1
run_scenarios standalone 127.0.0.1:18080
kill -TERM $PID; wait $PID || true
rm -rf "$DATA"

# Cluster: NATS + Cassandra + 2 routers + 2 edges.
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
scripts/cassandra/cassandra.sh start --port 19042 >/dev/null
"$NATS" -a 127.0.0.1 -p 14222 >/dev/null 2>&1 &
NPID=$!
sleep 0.5
KS=bench_$(date +%s)
PIDS=()
for i in 1 2; do
    "$BIN" router --admin-listen 127.0.0.1:0 --nats nats://127.0.0.1:14222 --cql-nodes 127.0.0.1:19042 \
        --cql-keyspace "$KS" --log warn >/dev/null 2>&1 &
    PIDS+=($!)
    sleep 2
done
for i in 1 2; do
    "$BIN" edge --listen 127.0.0.1:1808$i --admin-listen 127.0.0.1:0 --nats nats://127.0.0.1:14222 \
        --rate-requests-per-second 100000 --rate-request-burst 100000 --log warn >/dev/null 2>&1 &
    PIDS+=($!)
done
sleep 3
run_scenarios cluster 127.0.0.1:18081,127.0.0.1:18082
kill -TERM "${PIDS[@]}" $NPID 2>/dev/null || true
wait || true
echo "results in $OUT"
