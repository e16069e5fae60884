#!/usr/bin/env bash
# Everything CI runs, in the order a developer wants failures: formatting, lints, then the
# whole test suite: unit tests, the store conformance suite against the embedded store and a
# real CQL database (Apache Cassandra 5, started here), integration tests that start the real
# binary on free ports and talk to it over real WebSockets, cluster tests with real NATS
# servers, and the protocol suite once more against a cluster.
#
# MESSENGER_TEST_CQL=host:port uses an already running CQL database instead of starting one
# (with MESSENGER_TEST_CQL_TLS=DIR naming its ca.pem, client.pem and client-key.pem, or the
# client-certificate test cannot run).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs), then rerun" >&2
    exit 1
fi

# NATS for the cluster tests: Debian's package (root in CI; a developer may install it once).
if ! command -v nats-server >/dev/null && [[ ! -x /usr/sbin/nats-server ]]; then
    if [[ $(id -u) -eq 0 ]]; then
        export DEBIAN_FRONTEND=noninteractive
        (apt-get install -y nats-server || { apt-get update && apt-get install -y nats-server; }) >/dev/null
    else
        echo "nats-server not found: sudo apt-get install nats-server" >&2
        exit 1
    fi
fi
export PATH="$PATH:/usr/sbin"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Build the tests while the database starts.
cargo test --workspace --all-targets --locked --no-run

# Port below the ephemeral range, so that no client socket of the tests can hold it.
CQL_PORT=${MESSENGER_TEST_CQL_PORT:-19042}
if [[ -z "${MESSENGER_TEST_CQL:-}" ]]; then
    # Stop it afterwards only if this run started it.
    if ! scripts/cassandra/cassandra.sh status --port "$CQL_PORT" >/dev/null 2>&1; then
        trap 'scripts/cassandra/cassandra.sh stop --port "$CQL_PORT" >/dev/null 2>&1 || true' EXIT
    fi
    scripts/cassandra/cassandra.sh start --port "$CQL_PORT"
    export MESSENGER_TEST_CQL="127.0.0.1:$CQL_PORT"
    # Its TLS files (a test CA, a client certificate), for the client-certificate tests.
    export MESSENGER_TEST_CQL_TLS="${MESSENGER_TEST_CQL_TLS:-$(scripts/cassandra/cassandra.sh tls-dir --port "$CQL_PORT")}"
fi

cargo test --workspace --all-targets --locked

# The protocol and abuse suites once more, unchanged, against a cluster (NATS + 2 routers
# on the CQL database + 2 edges) instead of a standalone node.
MESSENGER_TEST_TOPOLOGY=cluster cargo test -p server --locked --test protocol --test abuse
