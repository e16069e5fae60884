#!/usr/bin/env bash
# Install (from Maven Central) and run a throw-away single-node Apache Cassandra 5.0
# on the loopback interface, for tests.
#
#   scripts/cassandra/cassandra.sh start   [--port 9042] [--dir DIR] [--timeout 180]
#   scripts/cassandra/cassandra.sh stop    [--port 9042] [--dir DIR]
#   scripts/cassandra/cassandra.sh restart [--port 9042] [--dir DIR]   # keeps the data
#   scripts/cassandra/cassandra.sh status  [--port 9042] [--dir DIR]   # exit 0 = up, 3 = down
#   scripts/cassandra/cassandra.sh clean   [--port 9042] [--dir DIR]   # stop + delete DIR
#   scripts/cassandra/cassandra.sh fetch                               # only download the jars
#   scripts/cassandra/cassandra.sh tls-dir [--port 9042] [--dir DIR]   # print the TLS files' directory
#
# Why Maven: the only things reachable from our machines (and CI) are package registries,
# so the Cassandra binary tarball cannot be downloaded. cassandra-all plus its runtime
# dependencies from Maven Central are exactly the tarball's lib/ directory; the rest of the
# tarball (bin/cassandra, conf/) is replaced by this script.
#
# Defaults: DIR = ${TMPDIR:-/tmp}/messenger-cassandra-<port>; jars are cached in
# ${XDG_CACHE_HOME:-$HOME/.cache}/messenger/cassandra-<version>/lib.
#
# Environment knobs (all optional):
#   CASSANDRA_CACHE_DIR   where the jars are cached (see above)
#   CASSANDRA_HEAP        JVM heap, -Xms = -Xmx (default 1g: test suites create and drop many keyspaces)
#   CASSANDRA_JMX_PORT    enable local JMX (nodetool) on this port; off by default
#   CASSANDRA_JVM_OPTS    extra JVM options, word-split (e.g. "-Dcassandra.skip_sync=true")
#   MAVEN_REPO_LOCAL      Maven local repository to use instead of ~/.m2/repository
#   JAVA_HOME / JAVA      which java to run (Cassandra 5.0 runs on Java 11 or 17)
#
# TLS: the native port takes plain and TLS connections alike (client_encryption_options
# with optional: true), and a TLS client must present a certificate that the node's test CA
# signed (require_client_auth). On first start the script makes that CA with openssl, in
# DIR/tls: ca.pem, node.pem (the node's key and certificate for 127.0.0.1), client.pem and
# client-key.pem (a client certificate for tests). Throw-away, like everything in DIR.
#
# Ports, for native port P: storage (gossip/internode) = P+10000, legacy SSL storage = P+20000,
# so instances on different native ports never collide (P must be <= 45535).
set -euo pipefail

CASSANDRA_VERSION=5.0.6
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_DIR=${CASSANDRA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/messenger/cassandra-$CASSANDRA_VERSION}
LIB_DIR=$CACHE_DIR/lib
HEAP=${CASSANDRA_HEAP:-1g}

log() { echo "cassandra.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# ---------------------------------------------------------------------------------------
# jars
# ---------------------------------------------------------------------------------------

# The cache is complete only once the marker exists: mvn writes into a temporary
# directory that is renamed into place, so an interrupted download is never mistaken
# for a good cache.
ensure_jars() {
    if [[ -f $LIB_DIR/.complete && -f $LIB_DIR/cassandra-all-$CASSANDRA_VERSION.jar ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    mkdir -p "$CACHE_DIR"
    # Several instances may be started at once on a cold cache: one fetches, the others wait.
    exec 9>"$CACHE_DIR/.lock"
    flock 9
    if [[ -f $LIB_DIR/.complete && -f $LIB_DIR/cassandra-all-$CASSANDRA_VERSION.jar ]]; then
        exec 9>&-
        return 0
    fi
    local tmp=$CACHE_DIR/lib.tmp.$$
    rm -rf "$tmp"
    local repo_opt=()
    [[ -n ${MAVEN_REPO_LOCAL:-} ]] && repo_opt=("-Dmaven.repo.local=$MAVEN_REPO_LOCAL")
    log "fetching cassandra-all $CASSANDRA_VERSION and its dependencies with Maven into $LIB_DIR"
    if ! mvn -B -q -Dstyle.color=never -f "$SCRIPT_DIR/pom.xml" "${repo_opt[@]}" \
            -Dcassandra.version="$CASSANDRA_VERSION" \
            dependency:copy-dependencies -DoutputDirectory="$tmp" >"$CACHE_DIR/mvn.log" 2>&1; then
        tail -n 40 "$CACHE_DIR/mvn.log" >&2
        rm -rf "$tmp"
        die "mvn dependency:copy-dependencies failed (full output: $CACHE_DIR/mvn.log)"
    fi
    [[ -f $tmp/cassandra-all-$CASSANDRA_VERSION.jar ]] || die "mvn did not produce cassandra-all-$CASSANDRA_VERSION.jar"
    touch "$tmp/.complete"
    rm -rf "$LIB_DIR"
    mv "$tmp" "$LIB_DIR"
    exec 9>&-
    local jars=("$LIB_DIR"/*.jar)
    log "cached ${#jars[@]} jars in $LIB_DIR"
}

# ---------------------------------------------------------------------------------------
# java
# ---------------------------------------------------------------------------------------

find_java() {
    if [[ -n ${JAVA:-} ]]; then
        :
    elif [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
        JAVA=$JAVA_HOME/bin/java
    else
        JAVA=$(command -v java) || die "java not found (Cassandra 5.0 needs Java 11 or 17)"
    fi
    local v
    v=$("$JAVA" -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n1)
    case $v in
        11|17) JAVA_MAJOR=$v ;;
        *) die "$JAVA is Java ${v:-?}; Cassandra $CASSANDRA_VERSION runs only on Java 11 or 17" ;;
    esac
}

# ---------------------------------------------------------------------------------------
# per-instance state
# ---------------------------------------------------------------------------------------

PORT=9042
DIR=
TIMEOUT=180

parse_args() {
    while (($#)); do
        case $1 in
            --port) PORT=${2:?--port needs a value}; shift 2 ;;
            --port=*) PORT=${1#*=}; shift ;;
            --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
            --dir=*) DIR=${1#*=}; shift ;;
            --timeout) TIMEOUT=${2:?--timeout needs a value}; shift 2 ;;
            --timeout=*) TIMEOUT=${1#*=}; shift ;;
            -h|--help) usage ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT < 1024 || PORT > 45535)); then
        die "--port must be a number in 1024..45535 (storage port = port+10000, ssl storage port = port+20000)"
    fi
    [[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
    DIR=${DIR:-${TMPDIR:-/tmp}/messenger-cassandra-$PORT}
    # absolute and normalised: DIR is matched against the java command line
    DIR=$(realpath -m -- "$DIR")
    STORAGE_PORT=$((PORT + 10000))
    SSL_STORAGE_PORT=$((PORT + 20000))
    PID_FILE=$DIR/cassandra.pid
    LOG_FILE=$DIR/cassandra.log
}

# True while pid exists and is not a zombie (a Cassandra that died while this script, its
# parent, is still polling stays a zombie, and kill -0 would still succeed on it).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Pid of the CassandraDaemon whose command line names DIR's cassandra.yaml, if any.
find_pid_by_dir() {
    local f pid cmd
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        cmd=$(tr '\0' ' ' 2>/dev/null <"$f") || continue
        if [[ $cmd == *org.apache.cassandra.service.CassandraDaemon* && $cmd == *"$DIR/cassandra.yaml"* ]] && alive "$pid"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

# Prints the pid of the Cassandra running for DIR, or fails. The pid must be alive and
# its command line must still be a CassandraDaemon for this DIR (guards against pid reuse).
running_pid() {
    [[ -f $PID_FILE ]] || return 1
    local pid
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    local cmd
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *org.apache.cassandra.service.CassandraDaemon* && $cmd == *"$DIR/cassandra.yaml"* ]] || return 1
    echo "$pid"
}

# True when something on 127.0.0.1:PORT speaks CQL: sends an OPTIONS request (protocol v4,
# stream 0, opcode 0x05, empty body) and expects a SUPPORTED response (0x84 .. 0x06).
# Pure bash (/dev/tcp) so that no Python package or cqlsh is needed.
cql_ready() {
    local port=$1 reply
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    reply=$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "\x04\x00\x00\x00\x05\x00\x00\x00\x00" >&3
        head -c 5 <&3 | od -An -tx1' _ "$port" 2>/dev/null) || return 1
    [[ ${reply//[[:space:]]/} == 8400000006 ]]
}

port_in_use() {
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# ---------------------------------------------------------------------------------------
# configuration files
# ---------------------------------------------------------------------------------------

# A test CA, the node's certificate (for 127.0.0.1) and a client certificate, P-256, made
# once per DIR. Keys are PKCS#8 PEM, which both Cassandra's PEM keystore and rustls read.
write_tls() {
    local d=$DIR/tls
    [[ -f $d/.complete ]] && return 0
    command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
    rm -rf "$d"
    mkdir -p "$d"
    (
        cd "$d"
        umask 077
        local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
        openssl req -x509 "${ec[@]}" -keyout ca-key.pem -out ca.pem -days 3650 -subj "/CN=messenger test CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        sign() { # name subject extended-key-usage
            openssl req "${ec[@]}" -keyout "$1-key.pem" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
            printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' "$3" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
                -extfile "$1.ext" -out "$1.pem" 2>/dev/null
            rm -f "$1.csr" "$1.ext"
        }
        sign node 127.0.0.1 serverAuth
        sign client messenger-test-client clientAuth
        # Cassandra's PEM keystore: the private key, then the certificate chain.
        cat node-key.pem node.pem >node-keystore.pem
        touch .complete
    ) || die "making the test TLS files in $d failed"
}

write_config() {
    mkdir -p "$DIR"/{data,commitlog,saved_caches,hints,cdc_raw,triggers}
    write_tls
    # Only what a single local test node needs; every other key keeps Cassandra 5.0's
    # built-in default (org.apache.cassandra.config.Config). Unknown keys are fatal in 5.0.
    cat >"$DIR/cassandra.yaml" <<EOF
# Written by scripts/cassandra/cassandra.sh on every start; edits are overwritten.
cluster_name: messenger-test
# One token, chosen at random on first boot: a single node owns the whole ring anyway,
# and it skips the token allocation work that num_tokens > 1 does.
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner

listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $STORAGE_PORT
# Deprecated in 5.0 and only bound with legacy SSL, but set apart anyway so that two
# instances can never ask for the same port.
ssl_storage_port: $SSL_STORAGE_PORT
native_transport_port: $PORT
start_native_transport: true
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      # the node is its own (only) seed; the port matters because it is not 7000
      - seeds: "127.0.0.1:$STORAGE_PORT"
endpoint_snitch: SimpleSnitch

authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer

data_file_directories:
  - $DIR/data
commitlog_directory: $DIR/commitlog
saved_caches_directory: $DIR/saved_caches
hints_directory: $DIR/hints
cdc_raw_directory: $DIR/cdc_raw

# "Ack means durable" on a single node: a write is acknowledged only after its commit-log
# segment is fsynced. Group mode fsyncs every few milliseconds for all writes waiting, so it
# costs latency, not throughput. (Production ScyllaDB relies on RF 3 + QUORUM instead.)
commitlog_sync: group
commitlog_sync_group_window: 5ms

# Small memtables: the heap is small and test data sets are tiny.
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB

# Tests drop and truncate tables all the time; a snapshot each time only costs disk/time.
auto_snapshot: false

# Plain and TLS clients on the same port; a TLS client needs a certificate from the test CA.
client_encryption_options:
  enabled: true
  optional: true
  require_client_auth: "true"
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
  keystore: $DIR/tls/node-keystore.pem
  truststore: $DIR/tls/ca.pem
EOF

    # Cassandra ships no logback.xml inside the jar; without one logback would log
    # everything at DEBUG. INFO to stdout, which start() sends to cassandra.log.
    cat >"$DIR/logback.xml" <<'EOF'
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %logger{0} - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
EOF
}

jvm_opts() {
    JVM_OPTS=(
        -Xms"$HEAP" -Xmx"$HEAP"
        -XX:+UseG1GC
        # a node that ran out of heap is in an undefined state: die, so the tests fail loudly
        # (Cassandra's startup checks warn without one of the *OnOutOfMemoryError flags)
        -XX:+ExitOnOutOfMemoryError
        # Cassandra's own stack size (conf/jvm-server.options): it runs many threads.
        -Xss256k
        # let periodic tasks run at lower priority (conf/jvm-server.options)
        -XX:+UseThreadPriorities
        # no /tmp/hsperfdata mmap (avoids GC pauses on slow disks; jps will not list it)
        -XX:+PerfDisableSharedMem
        -Djava.net.preferIPv4Stack=true
        # Cassandra runs with assertions on, except in Chronicle (its own jvm-server.options)
        -ea -da:net.openhft...
        # Java agent for exact object sizes (memtable accounting), as cassandra-env.sh does;
        # without it jamm falls back to guessing.
        -javaagent:"$LIB_DIR/jamm-0.4.0.jar"

        # --- JPMS: conf/jvm17-server.options of Cassandra 5.0 (also valid on Java 11) ---
        # Cassandra and its libraries (jamm, Chronicle, netty, the UDF compiler) reach into
        # JDK internals; without these it fails or falls back at startup.
        -Djdk.attach.allowAttachSelf=true
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
        --add-exports java.sql/java.sql=ALL-UNNAMED
        --add-exports java.base/java.lang.ref=ALL-UNNAMED
        --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
        --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
        --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
        --add-opens java.base/java.lang.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
        --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED
        --add-opens java.base/jdk.internal.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED
        --add-opens java.base/java.io=ALL-UNNAMED
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED
        --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
        --add-opens java.base/java.lang=ALL-UNNAMED
        --add-opens java.base/java.util=ALL-UNNAMED
        # not in Cassandra's list, harmless, kept for libraries that poke at NIO buffers
        # and j.u.c internals (Chronicle for audit/full-query logs, jamm)
        --add-opens java.base/java.nio=ALL-UNNAMED
        --add-opens java.base/java.util.concurrent=ALL-UNNAMED
        --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
        # netty: allow Unsafe-based direct buffers on Java >= 9 (jvm17-server.options)
        -Dio.netty.tryReflectionSetAccessible=true
        -Dio.netty.allocator.useCacheForAllThreads=true
        -Dio.netty.allocator.maxOrder=11

        # --- what bin/cassandra + cassandra-env.sh would pass ---
        -Dcassandra.config="file://$DIR/cassandra.yaml"
        -Dcassandra.storagedir="$DIR"
        -Dcassandra.logdir="$DIR"
        -Dcassandra.triggers_dir="$DIR/triggers"
        -Dlogback.configurationFile="$DIR/logback.xml"
        # Keep stdout open: without this CassandraDaemon closes System.out/err once it is
        # up, and the console log (our only log, redirected to cassandra.log) would stop.
        -Dcassandra-foreground=yes

        # --- start fast: a lone seed node has nobody to wait for ---
        # skip the "waiting for gossip to settle" loop (several seconds otherwise)
        -Dcassandra.skip_wait_for_gossip_to_settle=0
        # RING_DELAY (30 s by default) is slept on several join paths
        -Dcassandra.ring_delay_ms=100
        # create the default role right away instead of after 10 s
        -Dcassandra.superuser_setup_delay_ms=0
        # on stop, do not sleep 2 s after telling the (nonexistent) peers we are going down
        -Dcassandra.shutdown_announce_in_ms=0
    )
    if [[ -n ${CASSANDRA_JMX_PORT:-} ]]; then
        # JMX bound to localhost only, no auth; needed only for nodetool
        JVM_OPTS+=(-Dcassandra.jmx.local.port="$CASSANDRA_JMX_PORT")
    fi
    # Without cassandra.jmx.local.port / remote.port Cassandra starts no JMX server (it logs
    # an error line saying so, harmless): nothing else to bind, nothing to collide on.
    if [[ -n ${CASSANDRA_JVM_OPTS:-} ]]; then
        # shellcheck disable=SC2206 # word splitting wanted
        JVM_OPTS+=($CASSANDRA_JVM_OPTS)
    fi
}

# ---------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------

wait_ready() {
    local pid=$1 deadline=$((SECONDS + TIMEOUT))
    until cql_ready "$PORT"; do
        if ! alive "$pid"; then
            log "Cassandra (pid $pid) exited during startup; last lines of $LOG_FILE:"
            tail -n 60 "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "Cassandra (pid $pid) not accepting CQL on 127.0.0.1:$PORT after ${TIMEOUT}s; last lines of $LOG_FILE:"
            tail -n 60 "$LOG_FILE" >&2 || true
            log "stopping it"
            stop_pid "$pid"
            exit 1
        fi
        sleep 0.5
    done
}

cmd_start() {
    parse_args "$@"
    local pid
    if pid=$(running_pid); then
        wait_ready "$pid"
        log "already running (pid $pid) on 127.0.0.1:$PORT, dir $DIR"
        return 0
    fi
    rm -f "$PID_FILE"
    for p in "$PORT" "$STORAGE_PORT"; do
        ! port_in_use "$p" || die "127.0.0.1:$p is already in use by another process"
    done
    ensure_jars
    find_java
    write_config
    jvm_opts
    local t0=$EPOCHREALTIME
    {
        echo "=== $(date -u +%FT%TZ) starting Cassandra $CASSANDRA_VERSION: native 127.0.0.1:$PORT, storage $STORAGE_PORT, heap $HEAP"
    } >>"$LOG_FILE"
    # Keep Cassandra from mlock-ing its memory. CassandraDaemon calls mlockall(MCL_CURRENT)
    # at startup, which faults in and pins everything mapped so far, including the whole
    # -Xms heap: RSS ~950 MB instead of ~500 MB for a 512m heap. As root (CI) the call
    # succeeds whatever RLIMIT_MEMLOCK says, because root has CAP_IPC_LOCK, so drop that
    # capability for the java process; a zero soft RLIMIT_MEMLOCK covers the other users.
    # Cassandra then only logs "Unable to lock JVM memory (ENOMEM)" and goes on.
    local nolock=()
    if ((EUID == 0)) && command -v setpriv >/dev/null && setpriv --bounding-set -ipc_lock true 2>/dev/null; then
        nolock=(setpriv --bounding-set -ipc_lock)
    fi
    # setsid + nohup: the node outlives this script and is not hit by signals sent to the
    # caller's process group (e.g. ^C in the test runner); stop it with `stop`.
    # cwd = DIR so that hs_err files and the like land there.
    (
        cd "$DIR"
        ulimit -S -l 0 2>/dev/null || true
        exec "${nolock[@]}" setsid nohup "$JAVA" "${JVM_OPTS[@]}" -cp "$LIB_DIR/*" \
            org.apache.cassandra.service.CassandraDaemon </dev/null >>"$LOG_FILE" 2>&1
    ) &
    local launcher=$! i
    # $! normally is the java process itself (the subshell execs setsid, which execs nohup,
    # which execs java); look it up by command line in case setsid had to fork.
    pid=
    for ((i = 0; i < 50; i++)); do
        pid=$(find_pid_by_dir) && break
        alive "$launcher" || break
        sleep 0.1
    done
    [[ -n $pid ]] || pid=$launcher
    echo "$pid" >"$PID_FILE"
    log "started pid $pid (Java $JAVA_MAJOR, heap $HEAP), waiting up to ${TIMEOUT}s for CQL on 127.0.0.1:$PORT (log: $LOG_FILE)"
    wait_ready "$pid"
    log "ready in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s: CQL on 127.0.0.1:$PORT, pid $pid, dir $DIR"
}

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    # Cassandra's shutdown hook drains (flushes memtables) before exiting
    for ((i = 0; i < 40; i++)); do
        alive "$pid" || break
        sleep 0.5
    done
    if alive "$pid"; then
        log "pid $pid still alive after 20s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            alive "$pid" || break
            sleep 0.5
        done
    fi
    if alive "$pid"; then
        die "pid $pid did not exit"
    fi
    rm -f "$PID_FILE"
}

cmd_stop() {
    parse_args "$@"
    local pid
    if ! pid=$(running_pid); then
        rm -f "$PID_FILE"
        log "not running (dir $DIR)"
        return 0
    fi
    log "stopping pid $pid (127.0.0.1:$PORT)"
    stop_pid "$pid"
    log "stopped"
}

cmd_status() {
    parse_args "$@"
    local pid
    if pid=$(running_pid); then
        if cql_ready "$PORT"; then
            echo "running: pid $pid, CQL on 127.0.0.1:$PORT, dir $DIR"
        else
            echo "starting (not yet accepting CQL): pid $pid, 127.0.0.1:$PORT, dir $DIR"
        fi
        return 0
    fi
    echo "not running (127.0.0.1:$PORT, dir $DIR)"
    return 3
}

cmd_restart() {
    cmd_stop "$@"
    cmd_start "$@"
}

cmd_clean() {
    cmd_stop "$@"
    log "removing $DIR"
    rm -rf "$DIR"
}

(($#)) || usage
cmd=$1
shift
case $cmd in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    restart) cmd_restart "$@" ;;
    status) cmd_status "$@" ;;
    clean) cmd_clean "$@" ;;
    fetch) ensure_jars; log "jars in $LIB_DIR" ;;
    tls-dir) parse_args "$@"; echo "$DIR/tls" ;;
    -h|--help|help) usage ;;
    *) usage ;;
esac
