#!/usr/bin/env bash
# The macro benchmark: starts a node (standalone with the embedded store, or a local cluster)
# and runs the loadtest scenarios against it, one after another, writing each JSON and HTML
# report under results/<topology>-<timestamp>/ and a summary table (summary.md) beside them.
#
#   scripts/bench.sh                         # standalone, every scenario
#   scripts/bench.sh standalone direct-10k   # one scenario
#   scripts/bench.sh cluster                 # NATS + Cassandra + 2 routers + 2 edges
#   DURATION=60s scripts/bench.sh            # longer load phases (default 20s)
#   EDGES=8 scripts/bench.sh cluster idle-max # most idle connections: 18,000 per edge process
#
# Scenarios: idle, idle-max (18,000 per edge), direct-1k, direct-5k, direct-10k, group, broadcast (1→10,000 at 10 posts/s),
# broadcast-200k (20 posts/s), broadcast-1m (100 posts/s), reconnect-storm, mix, and direct-250
# (not in the default list: a rate a one-node Cassandra cluster keeps up with). A scenario that misses its SLO is reported, not fatal: the run goes on
# and the summary says FAILED.
set -euo pipefail
cd "$(dirname "$0")/.."
TOPOLOGY=${1:-standalone}
shift || true
SCENARIOS=("$@")
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=(idle direct-1k direct-5k direct-10k group broadcast broadcast-200k broadcast-1m reconnect-storm mix)
DURATION=${DURATION:-20s}
EDGE_COUNT=${EDGES:-2}
export MESSENGER_JWT_SECRET=${MESSENGER_JWT_SECRET:-bench-secret-bench-secret-bench-secret}
# Development mode: tokens minted from this secret carry no issuer or audience.
export MESSENGER_DEV=true
OUT=results/$TOPOLOGY-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
# One file per connection: raise the soft limit to the hard one (20,000 on these machines).
ulimit -n "$(ulimit -Hn)"

cargo build --release -p server --bin messenger -p loadtest --bin loadtest
# CARGO_TARGET_DIR is honoured, so an A/B run can keep two builds side by side.
BIN=${CARGO_TARGET_DIR:-target}/release/messenger
LT=${CARGO_TARGET_DIR:-target}/release/loadtest
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ $TOPOLOGY == cluster ]] && scripts/cassandra/cassandra.sh stop --port 19042 >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
LIMITS=(--rate-requests-per-second 1000000 --rate-request-burst 1000000 --log warn)

case $TOPOLOGY in
standalone)
    "$BIN" standalone --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:18090 --data-dir "$WORK/data" \
        "${LIMITS[@]}" >"$OUT/node.log" 2>&1 &
    PIDS+=($!)
    EDGES=127.0.0.1:18080
    METRICS=127.0.0.1:18090
    EDGE_COUNT=1
    ;;
cluster)
    NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
    scripts/cassandra/cassandra.sh start --port 19042 >/dev/null
    # shellcheck source=scripts/dev-cluster-auth.sh
    source scripts/dev-cluster-auth.sh
    dev_cluster_auth "$WORK"
    "$NATS" -c deploy/nats/nats.conf -a 127.0.0.1 -p 14222 >"$OUT/nats.log" 2>&1 &
    PIDS+=($!)
    sleep 0.5
    KS=bench_$(date +%s)
    for i in 1 2; do
        MESSENGER_NATS_USER=router MESSENGER_NATS_PASSWORD=$MESSENGER_NATS_ROUTER_PASSWORD \
            "$BIN" router --admin-listen "127.0.0.1:1829$i" --nats nats://127.0.0.1:14222 --cql-nodes 127.0.0.1:19042 \
            --cql-keyspace "$KS" --log warn >"$OUT/router$i.log" 2>&1 &
        PIDS+=($!)
        sleep 2
    done
    EDGES=
    METRICS=
    for i in $(seq "$EDGE_COUNT"); do
        MESSENGER_NATS_USER=edge MESSENGER_NATS_PASSWORD=$MESSENGER_NATS_EDGE_PASSWORD \
            "$BIN" edge --listen "127.0.0.1:$((18100 + i))" --admin-listen "127.0.0.1:$((18200 + i))" \
            --nats nats://127.0.0.1:14222 "${LIMITS[@]}" >"$OUT/edge$i.log" 2>&1 &
        PIDS+=($!)
        EDGES+=${EDGES:+,}127.0.0.1:$((18100 + i))
        METRICS+=${METRICS:+,}127.0.0.1:$((18200 + i))
    done
    ;;
*)
    echo "usage: scripts/bench.sh [standalone|cluster] [scenario...]" >&2
    exit 64
    ;;
esac
ADMIN=${METRICS%%,*}
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/${ADMIN%:*}/${ADMIN#*:}") 2>/dev/null && break
    sleep 0.2
done

run() { # name, loadtest arguments...
    local name=$1
    shift
    echo "== $name" >&2
    "$LT" --edges "$EDGES" --metrics "$METRICS" --out "$OUT" --name "$name" --duration "$DURATION" "$@" \
        >/dev/null || echo "$name: exit $?" >>"$OUT/failures.txt"
}

for s in "${SCENARIOS[@]}"; do
    case $s in
    idle) run idle --connect-rate 5000 idle --connections 18000 ;;
    # As many as the edges hold within their 20,000-file limit (one edge in standalone).
    idle-max) run idle-max --connect-rate 2000 idle --connections $((18000 * EDGE_COUNT)) ;;
    direct-1k) run direct-1k direct --pairs 500 --rate 1000 --slo-p99-ms 5 ;;
    direct-5k) run direct-5k direct --pairs 1000 --rate 5000 --slo-p99-ms 5 ;;
    direct-10k) run direct-10k direct --pairs 2000 --rate 10000 --slo-p99-ms 5 ;;
    group) run group group --groups 200 --size 20 --rate 1000 ;;
    broadcast) run broadcast broadcast --subscribers 10000 --rate 10 ;;
    broadcast-200k) run broadcast-200k broadcast --subscribers 10000 --rate 20 ;;
    # The goal: 1,000,000 deliveries/s of 100 B to 10,000 subscribers (100 posts/s). The long
    # drain lets a node that falls behind finish, so lateness is not counted as loss.
    broadcast-1m) run broadcast-1m --drain 120s broadcast --subscribers 10000 --rate 100 --slo-p99-ms 1000 ;;
    direct-250) run direct-250 direct --pairs 250 --rate 250 --slo-p99-ms 5 ;;
    reconnect-storm) run reconnect-storm reconnect-storm --pairs 2000 --rate 1000 --percent 30 ;;
    mix) run mix mix --connections 10000 --rate 1000 --broadcast-rate 2 ;;
    *) echo "unknown scenario $s" >&2; exit 64 ;;
    esac
done

python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = ["| scenario | conns | sends/s (target) | deliveries/s | deliver p50 / p99 / p99.9 / max ms | ack p99 ms | violations | server B/conn | server cores | deliveries/CPU-s | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
for f in sorted(out.glob("*.json"), key=lambda p: p.stat().st_mtime):
    r = json.loads(f.read_text())
    t, d, a, c = r["throughput"], r["latency_ms"]["deliver"], r["latency_ms"]["ack"], r["correctness"]
    v = c["missing"] + c["duplicates"] + c["out_of_order"] + c["gaps"]
    mem = r.get("server") or {}
    rows.append(f"| {f.stem} | {r['connections']['opened']} | {t['achieved_sends_per_second']:.0f} ({t['target_sends_per_second']:.0f}) "
                f"| {t['deliveries_per_second']:.0f} | {d['p50']:.2f} / {d['p99']:.2f} / {d['p999']:.2f} / {d['max']:.2f} "
                f"| {a['p99']:.2f} | {v} | {mem.get('bytes_per_connection', 0):.0f} | {mem.get('cpu_cores') or 0:.2f} "
                f"| {mem.get('deliveries_per_cpu_second') or 0:.0f} | {'pass' if r['passed'] else 'FAILED'} |")
(out / "summary.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
echo "reports in $OUT" >&2
