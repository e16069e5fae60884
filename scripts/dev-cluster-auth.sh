# Sourced by scripts/cluster.sh and scripts/bench.sh: development credentials for a local
# cluster, in directory $1 (created if missing):
# - a cluster key ($1/cluster.key, 32 random bytes in hex, kept across runs) exported as
#   MESSENGER_CLUSTER_KEY_FILE, which every edge and router reads;
# - random NATS passwords for the two roles, exported as MESSENGER_NATS_EDGE_PASSWORD and
#   MESSENGER_NATS_ROUTER_PASSWORD, which deploy/nats/nats.conf reads.
# Start NATS with `nats-server -c deploy/nats/nats.conf …`, then each process with its role:
#   MESSENGER_NATS_USER=edge MESSENGER_NATS_PASSWORD=$MESSENGER_NATS_EDGE_PASSWORD messenger edge …
# Development only: production keys and passwords come from the operator's secret store.

dev_cluster_auth() {
    local dir=$1
    mkdir -p "$dir"
    if [[ ! -s $dir/cluster.key ]]; then
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$dir/cluster.key" && echo >>"$dir/cluster.key")
    fi
    export MESSENGER_CLUSTER_KEY_FILE=$dir/cluster.key
    export MESSENGER_NATS_EDGE_PASSWORD=${MESSENGER_NATS_EDGE_PASSWORD:-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')}
    export MESSENGER_NATS_ROUTER_PASSWORD=${MESSENGER_NATS_ROUTER_PASSWORD:-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')}
}
