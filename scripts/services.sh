#!/usr/bin/env bash
# Local single-node Apache Cassandra 5.0.8 and Apache Kafka 4.4.0 (KRaft, broker+controller in one
# process) on loopback, for mysimbdp's integration tests and benchmarks. Both run from Maven Central
# jars on the machine's Java 17; nothing else is needed besides Maven (and python3 for `cqlsh`).
# Recipe: shared/notes/real-services.md.
#
# Usage: scripts/services.sh <command> [cassandra|kafka|all]      (default: all)
#   fetch    download the jars (Maven Central) unless already complete
#   start    fetch if needed, write configs, start in the background, wait until ready
#   stop     SIGTERM the recorded PID, SIGKILL after MYSIMBDP_SERVICES_STOP_TIMEOUT s
#   restart  stop then start
#   status   running / ready per service (exit 0 only if all asked for are ready)
#   env      print eval-able `export MYSIMBDP_TEST_...=host:port` lines
#   wipe     stop and delete data and logs (keeps the jars and the cqlsh venv)
#   cqlsh    venv + PyPI cqlsh under the services dir; prints the cqlsh executable path
#   cql 'STATEMENT'   run one CQL statement through the built-in native-protocol client
#   logs     print the paths of the service logs
#
# Environment:
#   MYSIMBDP_SERVICES_DIR           cache/state dir (default: <repo>/.services)
#   MYSIMBDP_SERVICES_TIMEOUT       readiness timeout per start, seconds (default 180)
#   MYSIMBDP_SERVICES_STOP_TIMEOUT  SIGTERM grace before SIGKILL, seconds (default 30)
#   MYSIMBDP_SERVICES_MODE          "test" (default) or "bench" (omits Cassandra's test-only flags:
#                                   unsafesystem, flush_local_schema_changes=false, nonGracefulShutdown).
#                                   In test mode a kill -9 of Cassandra loses the schema changes made
#                                   since its last clean start (and rows written to tables created
#                                   then): crash-recovery tests must run in bench mode.
#   MYSIMBDP_CASSANDRA_HEAP         Cassandra -Xms/-Xmx (default 1g)
#   MYSIMBDP_KAFKA_HEAP             Kafka -Xms/-Xmx (default 512m)
#   MYSIMBDP_CASSANDRA_JVM_OPTS, MYSIMBDP_KAFKA_JVM_OPTS   extra JVM flags (word-split)
#   MYSIMBDP_CQLSH_VERSION          PyPI cqlsh version for `cqlsh` (default 6.2.2)
#   JAVA_HOME                       used if set, else `java` on PATH
#
# Messages go to stderr prefixed "services:"; machine-readable output (env lines, the cqlsh path,
# status lines, query rows) goes to stdout.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
SVC=${MYSIMBDP_SERVICES_DIR:-$REPO_DIR/.services}
mkdir -p "$SVC"
SVC=$(cd "$SVC" && pwd)   # absolute, for the configs

TIMEOUT=${MYSIMBDP_SERVICES_TIMEOUT:-180}
STOP_TIMEOUT=${MYSIMBDP_SERVICES_STOP_TIMEOUT:-30}
MODE=${MYSIMBDP_SERVICES_MODE:-test}
CASSANDRA_HEAP=${MYSIMBDP_CASSANDRA_HEAP:-1g}
KAFKA_HEAP=${MYSIMBDP_KAFKA_HEAP:-512m}
CQLSH_VERSION=${MYSIMBDP_CQLSH_VERSION:-6.2.2}

CASSANDRA_VERSION=5.0.8
KAFKA_VERSION=4.4.0
LOG4J_SLF4J_VERSION=2.25.5
KAFKA_CLUSTER_ID=MkU3OEVBNTcwNTJENDM2Qk
HOST=127.0.0.1
CASSANDRA_PORTS=(9042 7000 7199)   # native, storage, JMX
KAFKA_PORTS=(9092 9093)            # PLAINTEXT, CONTROLLER
CQL_PORT=9042
KAFKA_PORT=9092

CASSANDRA_MAIN=org.apache.cassandra.service.CassandraDaemon
KAFKA_MAIN=kafka.Kafka

say() { printf 'services: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# milliseconds since the epoch, and "S.s" elapsed since a given ms stamp
now_ms() {
  local t=${EPOCHREALTIME:-}
  if [[ -z $t ]]; then date +%s%3N; return; fi   # bash < 5
  t=${t//[!0-9]/}
  echo $((10#$t / 1000))
}
elapsed() { local d=$(($(now_ms) - $1)); printf '%d.%d' $((d / 1000)) $((d % 1000 / 100)); }

java_bin() {
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null; then command -v java
  else die "java not found (need Java 17: set JAVA_HOME or put java on PATH)"; fi
}

# ---------------------------------------------------------------- processes

pid_file() { echo "$SVC/$1/pid"; }

# identity marker that must appear in the process' command line: main class + our own config path
pid_marker() {
  case $1 in
    cassandra) echo "-Dcassandra.storagedir=$SVC/cassandra/var" ;;
    kafka) echo "$SVC/kafka/server.properties" ;;
  esac
}
main_class() { case $1 in cassandra) echo "$CASSANDRA_MAIN" ;; kafka) echo "$KAFKA_MAIN" ;; esac; }

proc_cmdline() {
  if [[ -r /proc/$1/cmdline ]]; then tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
  else ps -o args= -p "$1" 2>/dev/null || true; fi
}

# alive, i.e. not gone and not merely an unreaped zombie. A JVM's main thread can show as Z while
# its other threads are still shutting down (and holding the ports), so look at every thread.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [[ -d /proc/$1/task ]] || return 0
  local t st
  for t in /proc/"$1"/task/*/stat; do
    st=$(<"$t") 2>/dev/null || continue
    st=${st##*) }
    [[ ${st%% *} == [ZX] ]] || return 0
  done
  return 1
}

# is this pid alive and really our service (guards against PID reuse after a reboot / kill -9)?
is_our_pid() {
  local svc=$1 pid=$2 cmd
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  cmd=$(proc_cmdline "$pid")
  [[ $cmd == *"$(main_class "$svc")"* && $cmd == *"$(pid_marker "$svc")"* ]]
}

# prints the running pid of a service (and returns 0), removing a stale pid file otherwise
running_pid() {
  local svc=$1 f pid
  f=$(pid_file "$svc")
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  if is_our_pid "$svc" "$pid"; then echo "$pid"; return 0; fi
  say "$svc: removing stale pid file (pid ${pid:-?} is not running)"
  rm -f "$f"
  return 1
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# ---------------------------------------------------------------- binary helpers (hex strings)

hex_of() { printf %s "$1" | od -An -v -tx1 | tr -d ' \n'; }
be16() { printf '%04x' "$1"; }
be32() { printf '%08x' "$1"; }
# hex string -> bytes on fd $2
send_hex() { printf '%b' "$(sed 's/../\\x&/g' <<<"$1")" >&"$2"; }
# read exactly $2 bytes from fd $1 (with a timeout) -> hex string on stdout
read_hex() {
  local fd=$1 n=$2
  ((n > 0)) || return 0
  timeout 10 dd bs="$n" count=1 iflag=fullblock status=none <&"$fd" 2>/dev/null | od -An -v -tx1 | tr -d ' \n'
}
# unsigned / signed integers at a byte offset of a hex string
u16() { echo $((16#${1:$2*2:4})); }
s16() { local v=$((16#${1:$2*2:4})); ((v >= 32768)) && v=$((v - 65536)); echo $v; }
u32() { echo $((16#${1:$2*2:8})); }
s32() { local v=$((16#${1:$2*2:8})); ((v >= 2147483648)) && v=$((v - 4294967296)); echo $v; }
hex_text() { printf '%b' "$(sed 's/../\\x&/g' <<<"$1")"; }
# printable (ASCII or UTF-8 high bytes) -> text, else 0x<hex>
cell_text() {
  if [[ $1 =~ ^(([2-6][0-9a-f])|(7[0-9a-e])|([89a-f][0-9a-f]))*$ ]]; then hex_text "$1"; else printf '0x%s' "$1"; fi
}

# ---------------------------------------------------------------- CQL native protocol v4 client

# cql_query STATEMENT: STARTUP + QUERY (consistency ONE, skip_metadata) on $HOST:$CQL_PORT.
# Prints result rows (cells separated by " | ") or a one-line summary; 0 on RESULT (opcode 0x08),
# 2 on a server ERROR, 1 when it cannot connect or the exchange is broken.
cql_query() (
  set +e
  local q=$1 fd hdr op len body
  { exec {fd}<>"/dev/tcp/$HOST/$CQL_PORT"; } 2>/dev/null || exit 1
  read_frame() {
    hdr=$(read_hex "$fd" 9)
    ((${#hdr} == 18)) || return 1
    op=${hdr:8:2}
    len=$(u32 "$hdr" 5)
    body=$(read_hex "$fd" "$len")
    ((${#body} == len * 2))
  }
  local opts
  opts=$(be16 1)$(be16 11)$(hex_of CQL_VERSION)$(be16 5)$(hex_of 3.0.0)
  send_hex "04000001""01""$(be32 $((${#opts} / 2)))$opts" "$fd" || exit 1
  read_frame || exit 1
  case $op in
    02) ;;
    03) echo "CQL server requires authentication (not supported here)" >&2; exit 1 ;;
    00) echo "CQL STARTUP error 0x${body:0:8}: $(hex_text "${body:12:$(u16 "$body" 4)*2}")" >&2; exit 2 ;;
    *) echo "unexpected CQL opcode 0x$op to STARTUP" >&2; exit 1 ;;
  esac
  local qh
  qh=$(hex_of "$q")
  # <long string query><short consistency=ONE><byte flags=0x02 skip_metadata>
  body=$(be32 $((${#qh} / 2)))$qh"0001""02"
  send_hex "04000002""07""$(be32 $((${#body} / 2)))$body" "$fd" || exit 1
  read_frame || exit 1
  case $op in
    08) ;;
    00) echo "CQL error 0x${body:0:8}: $(hex_text "${body:12:$(u16 "$body" 4)*2}")" >&2; exit 2 ;;
    *) echo "unexpected CQL opcode 0x$op to QUERY" >&2; exit 1 ;;
  esac
  local kind
  kind=$(u32 "$body" 0)
  case $kind in
    1) echo "OK" ;;
    3) echo "OK (keyspace $(hex_text "${body:12:$(u16 "$body" 4)*2}"))" ;;
    4) echo "OK (prepared)" ;;
    5) echo "OK (schema change)" ;;
    2)
      local flags ncol pos nrows r c clen line cell
      flags=$(u32 "$body" 4)
      ncol=$(u32 "$body" 8)
      pos=12
      if ((flags & 2)); then pos=$((pos + 4 + $(u32 "$body" $pos))); fi   # paging state
      if ((!(flags & 4))); then echo "OK (rows with metadata: not decoded)"; exit 0; fi
      nrows=$(u32 "$body" $pos); pos=$((pos + 4))
      for ((r = 0; r < nrows; r++)); do
        line=""
        for ((c = 0; c < ncol; c++)); do
          clen=$(s32 "$body" $pos); pos=$((pos + 4))
          if ((clen < 0)); then cell=null
          else cell=$(cell_text "${body:pos*2:clen*2}"); pos=$((pos + clen)); fi
          ((c > 0)) && line+=" | "
          line+=$cell
        done
        printf '%s\n' "$line"
      done
      ;;
    *) echo "OK (result kind $kind)" ;;
  esac
  exit 0
)

# ---------------------------------------------------------------- Kafka Metadata v4 client

# kafka_metadata: prints "broker <id> <host>:<port>" per broker listed by the broker at
# $HOST:$KAFKA_PORT, then "cluster_id ..." and "controller ..."; 0 when at least one broker is listed.
kafka_metadata() (
  set +e
  local fd cid body size resp
  { exec {fd}<>"/dev/tcp/$HOST/$KAFKA_PORT"; } 2>/dev/null || exit 1
  cid=$(hex_of mysimbdp-services)
  # api_key=3 Metadata, api_version=4, correlation_id=1, client_id; topics=[] (none), allow_auto=false
  body="0003""0004""00000001"$(be16 $((${#cid} / 2)))$cid"00000000""00"
  send_hex "$(be32 $((${#body} / 2)))$body" "$fd" || exit 1
  size=$(read_hex "$fd" 4)
  ((${#size} == 8)) || exit 1
  size=$(u32 "$size" 0)
  resp=$(read_hex "$fd" "$size")
  ((${#resp} == size * 2 && size >= 12)) || exit 1
  [[ ${resp:0:8} == 00000001 ]] || exit 1
  local pos=4 n i node hl host port rl   # after correlation_id
  pos=$((pos + 4))                       # throttle_time_ms
  n=$(u32 "$resp" $pos); pos=$((pos + 4))
  for ((i = 0; i < n; i++)); do
    node=$(u32 "$resp" $pos); pos=$((pos + 4))
    hl=$(u16 "$resp" $pos); pos=$((pos + 2))
    host=$(hex_text "${resp:pos*2:hl*2}"); pos=$((pos + hl))
    port=$(u32 "$resp" $pos); pos=$((pos + 4))
    rl=$(s16 "$resp" $pos); pos=$((pos + 2))
    ((rl > 0)) && pos=$((pos + rl))
    echo "broker $node $host:$port"
  done
  rl=$(s16 "$resp" $pos); pos=$((pos + 2))
  if ((rl > 0)); then echo "cluster_id $(hex_text "${resp:pos*2:rl*2}")"; pos=$((pos + rl)); fi
  echo "controller $(s32 "$resp" $pos)"
  ((n > 0))
)

# ---------------------------------------------------------------- readiness

# probe SVC: 0 when ready; prints a short description of what answered
probe() {
  local out
  case $1 in
    cassandra)
      port_open "$CQL_PORT" || return 1
      out=$(cql_query "SELECT release_version FROM system.local" 2>/dev/null) || return 1
      echo "CQL answers, release_version $out"
      ;;
    kafka)
      port_open "$KAFKA_PORT" || return 1
      out=$(kafka_metadata 2>/dev/null) || return 1
      echo "Metadata lists $(grep '^broker' <<<"$out" | cut -d' ' -f2- | sed 's/^/node /' | paste -sd, -)"
      ;;
  esac
}

service_log() { case $1 in cassandra) echo "$SVC/cassandra/logs/system.log" ;; kafka) echo "$SVC/kafka/logs/server.log" ;; esac; }

show_logs() {
  local svc=$1 f
  for f in "$SVC/$svc/logs/stdout.log" "$(service_log "$svc")"; do
    [[ -s $f ]] || continue
    say "---- last lines of $f"
    tail -n 25 "$f" | cut -c1-300 >&2
  done
  say "----"
}

# ---------------------------------------------------------------- fetch

write_poms() {
  mkdir -p "$SVC/cassandra" "$SVC/kafka"
  cat >"$SVC/cassandra/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId><artifactId>cassandra-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.cassandra</groupId><artifactId>cassandra-all</artifactId><version>$CASSANDRA_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  cat >"$SVC/kafka/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- the Kafka POMs bring log4j-api/core but no SLF4J binding: without this the broker logs nothing -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_SLF4J_VERSION</version></dependency>
    <!-- benchmark peers: ProducerPerformance, ConsumerPerformance, TopicCommand -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
  </dependencies>
</project>
EOF
}

fetch_one() {
  local svc=$1 dir="$SVC/$1" marker sum t0
  write_poms
  marker="$dir/lib.complete"
  sum=$(cksum <"$dir/pom.xml")
  if [[ -f $marker && $(<"$marker") == "$sum" && -d $dir/lib ]]; then
    say "$svc: jars already in $dir/lib"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (need Apache Maven to fetch the jars)"
  say "$svc: fetching jars from Maven Central into $dir/lib ..."
  t0=$(now_ms)
  rm -rf "$dir/lib" "$marker"
  if ! (cd "$dir" && mvn -B -q -f "$dir/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$dir/lib") 2>&1 \
    | sed 's/\x1b\[[0-9;]*m//g' | { grep -v '^[[:space:]]*$' || true; } >&2; then
    die "$svc: mvn copy-dependencies failed (see above); rerun 'fetch' to retry"
  fi
  printf '%s\n' "$sum" >"$marker"
  say "$svc: fetched $(find "$dir/lib" -name '*.jar' | wc -l) jars ($(du -sh "$dir/lib" | cut -f1)) in $(elapsed "$t0") s"
}

# ---------------------------------------------------------------- configs

write_cassandra_config() {
  local d="$SVC/cassandra"
  mkdir -p "$d/var" "$d/logs"
  cat >"$d/cassandra.yaml" <<'EOF'
# written by scripts/services.sh; data, commitlog, hints come from -Dcassandra.storagedir
cluster_name: mysimbdp-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: 7000
native_transport_port: 9042
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:7000"
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_disk_access_mode: legacy
auto_snapshot: false
concurrent_compactors: 1
batch_size_warn_threshold: 64KiB
EOF
  cat >"$d/logback.xml" <<'EOF'
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
EOF
}

write_kafka_config() {
  local d="$SVC/kafka"
  mkdir -p "$d/data" "$d/logs"
  cat >"$d/server.properties" <<EOF
# written by scripts/services.sh
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=PLAINTEXT://127.0.0.1:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
broker.session.timeout.ms=2000
broker.heartbeat.interval.ms=500
EOF
  cat >"$d/log4j2.xml" <<'EOF'
<Configuration status="WARN">
  <Appenders><File name="server" fileName="${sys:kafka.logs.dir}/server.log"><PatternLayout pattern="[%d] %p %m (%c)%n"/></File></Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/><Logger name="state.change.logger" level="WARN"/>
  </Loggers>
</Configuration>
EOF
}

# ---------------------------------------------------------------- launch

# keep one previous service log, so a failure shows only this start's lines
rotate_log() {
  local f
  f=$(service_log "$1")
  if [[ -f $f ]]; then mv -f "$f" "$f.prev"; fi
}

# run "$@" detached (own session, no stdin, output to $1), echo its pid
spawn() {
  local log=$1; shift
  if command -v setsid >/dev/null; then
    setsid "$@" </dev/null >"$log" 2>&1 &
  else
    nohup "$@" </dev/null >"$log" 2>&1 &
  fi
  echo $!
}

launch_cassandra() {
  local d="$SVC/cassandra" lib="$SVC/cassandra/lib" java jamm
  java=$(java_bin)
  write_cassandra_config
  rotate_log cassandra
  jamm=$(find "$lib" -maxdepth 1 -name 'jamm-*.jar' | head -n 1)
  [[ -n $jamm ]] || die "cassandra: no jamm jar in $lib (run '$0 fetch cassandra')"
  local -a opts=(
    "-Xms$CASSANDRA_HEAP" "-Xmx$CASSANDRA_HEAP" -Xss256k -XX:+UseG1GC -XX:+ParallelRefProcEnabled
    -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=16m -XX:MaxGCPauseMillis=300 -XX:+PerfDisableSharedMem
    -ea -da:net.openhft... -Djava.net.preferIPv4Stack=true -Dchronicle.analytics.disable=true
    "-javaagent:$jamm"
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.management/com.sun.jmx.remote.security=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
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
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    "-Dcassandra.config=file://$d/cassandra.yaml" "-Dcassandra.storagedir=$d/var"
    "-Dcassandra.logdir=$d/logs" "-Dlogback.configurationFile=$d/logback.xml"
    -Dcassandra-foreground=yes -Dcassandra.jmx.local.port=7199 -Dcassandra.shutdown_announce_in_ms=0
  )
  if [[ $MODE != bench ]]; then
    # test-only: faster start, schema changes and stop; NOT for benchmarks
    opts+=(-Dcassandra.unsafesystem=true -Dcassandra.test.flush_local_schema_changes=false
      -Dcassandra.test.messagingService.nonGracefulShutdown=true)
  fi
  # shellcheck disable=SC2206
  [[ -n ${MYSIMBDP_CASSANDRA_JVM_OPTS:-} ]] && opts+=($MYSIMBDP_CASSANDRA_JVM_OPTS)
  spawn "$d/logs/stdout.log" "$java" "${opts[@]}" -cp "$lib/*" "$CASSANDRA_MAIN"
}

launch_kafka() {
  local d="$SVC/kafka" lib="$SVC/kafka/lib" java
  java=$(java_bin)
  write_kafka_config
  rotate_log kafka
  if [[ ! -f $d/data/meta.properties ]]; then
    local t0
    t0=$(now_ms)
    if ! "$java" -Xmx256m "-Dlog4j2.configurationFile=file:$d/log4j2.xml" "-Dkafka.logs.dir=$d/logs" \
      -cp "$lib/*" kafka.tools.StorageTool format -t "$KAFKA_CLUSTER_ID" \
      -c "$d/server.properties" --ignore-formatted >"$d/logs/format.log" 2>&1; then
      say "kafka: storage format failed:"
      tail -n 20 "$d/logs/format.log" >&2
      return 1
    fi
    say "kafka: formatted $d/data (cluster id $KAFKA_CLUSTER_ID) in $(elapsed "$t0") s"
  fi
  local -a opts=(
    "-Xms$KAFKA_HEAP" "-Xmx$KAFKA_HEAP" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15
    -Djava.awt.headless=true "-Dlog4j2.configurationFile=file:$d/log4j2.xml" "-Dkafka.logs.dir=$d/logs"
  )
  # shellcheck disable=SC2206
  [[ -n ${MYSIMBDP_KAFKA_JVM_OPTS:-} ]] && opts+=($MYSIMBDP_KAFKA_JVM_OPTS)
  spawn "$d/logs/stdout.log" "$java" "${opts[@]}" -cp "$lib/*" "$KAFKA_MAIN" "$d/server.properties"
}

ports_of() { case $1 in cassandra) echo "${CASSANDRA_PORTS[*]}" ;; kafka) echo "${KAFKA_PORTS[*]}" ;; esac; }

# ---------------------------------------------------------------- commands

cmd_fetch() { local s; for s in "$@"; do fetch_one "$s"; done; }

# wait until SVC (pid $2, launched at ms $3) is ready; on death or timeout show logs and fail
wait_ready() {
  local svc=$1 pid=$2 t0=$3 deadline desc
  deadline=$((t0 + TIMEOUT * 1000))
  while :; do
    if ! is_our_pid "$svc" "$pid"; then
      # Just launched, the child may not have exec'd java yet: its command line is still the
      # shell's. (Seen on a loaded machine: 'exited during start after 0.0 s' while the JVM
      # went on to start, unrecorded.)
      if alive "$pid" && (($(now_ms) - t0 < 10000)); then
        sleep 0.1
        continue
      fi
      say "$svc: FAILED: process $pid exited during start after $(elapsed "$t0") s"
      show_logs "$svc"
      rm -f "$(pid_file "$svc")"
      return 1
    fi
    if desc=$(probe "$svc") && is_our_pid "$svc" "$pid"; then
      say "$svc: ready in $(elapsed "$t0") s (pid $pid, $desc)"
      return 0
    fi
    if (($(now_ms) > deadline)); then
      say "$svc: FAILED: not ready within ${TIMEOUT} s (MYSIMBDP_SERVICES_TIMEOUT); stopping it"
      show_logs "$svc"
      stop_one "$svc" || true
      return 1
    fi
    sleep 0.5
  done
}

start_one() {
  local svc=$1 pid p desc t0
  if pid=$(running_pid "$svc"); then
    if desc=$(probe "$svc"); then
      say "$svc: already running (pid $pid) and ready: $desc; nothing to do"
      return 0
    fi
    say "$svc: already running (pid $pid) but not ready yet; waiting"
    wait_ready "$svc" "$pid" "$(now_ms)"
    return
  fi
  for p in $(ports_of "$svc"); do
    if port_open "$p"; then
      say "$svc: port $HOST:$p is already in use by a process this script did not start (another services dir? check 'ss -ltnp')"
      return 1
    fi
  done
  fetch_one "$svc"
  say "$svc: starting (mode $MODE, heap $([[ $svc == cassandra ]] && echo "$CASSANDRA_HEAP" || echo "$KAFKA_HEAP"), dir $SVC/$svc)"
  t0=$(now_ms)
  pid=$("launch_$svc") || { say "$svc: launch failed"; return 1; }
  echo "$pid" >"$(pid_file "$svc")"
  wait_ready "$svc" "$pid" "$t0"
}

# one after the other: on 2 cores two JVMs starting together take longer than in sequence
cmd_start() {
  local s
  for s in "$@"; do
    start_one "$s" || die "$s: start failed (logs under $SVC/$s/logs)"
  done
}

stop_one() {
  local svc=$1 pid t0 f
  f=$(pid_file "$svc")
  if ! pid=$(running_pid "$svc"); then
    say "$svc: not running"
    rm -f "$f"
    return 0
  fi
  t0=$(now_ms)
  say "$svc: stopping pid $pid (SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  local limit=$(($(now_ms) + STOP_TIMEOUT * 1000))
  while alive "$pid"; do
    if (($(now_ms) > limit)); then
      say "$svc: still alive after ${STOP_TIMEOUT} s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      limit=$(($(now_ms) + 10000))
      while alive "$pid"; do
        (($(now_ms) > limit)) && die "$svc: pid $pid survived SIGKILL"
        sleep 0.1
      done
      break
    fi
    sleep 0.1
  done
  rm -f "$f"
  say "$svc: stopped in $(elapsed "$t0") s"
}

cmd_stop() {
  local s i
  # reverse order: kafka first for "all"
  for ((i = $# ; i >= 1; i--)); do s=${!i}; stop_one "$s"; done
}

cmd_status() {
  local s pid desc rc=0
  for s in "$@"; do
    if pid=$(running_pid "$s" 2>/dev/null); then
      if desc=$(probe "$s"); then echo "$s: running (pid $pid), ready: $desc"
      else echo "$s: running (pid $pid), NOT ready"; rc=3; fi
    else
      echo "$s: stopped"; rc=3
    fi
  done
  return $rc
}

cmd_env() {
  local s
  for s in "$@"; do
    case $s in
      cassandra) echo "export MYSIMBDP_TEST_CASSANDRA=$HOST:$CQL_PORT" ;;
      kafka) echo "export MYSIMBDP_TEST_KAFKA=$HOST:$KAFKA_PORT" ;;
    esac
  done
}

cmd_wipe() {
  local s
  cmd_stop "$@"
  for s in "$@"; do
    case $s in
      cassandra) rm -rf "$SVC/cassandra/var" "$SVC/cassandra/logs" ;;
      kafka) rm -rf "$SVC/kafka/data" "$SVC/kafka/logs" ;;
    esac
    say "$s: data and logs deleted (jars kept)"
  done
}

cmd_cqlsh() {
  local venv="$SVC/cqlsh-venv" py bin marker t0
  bin="$venv/bin/cqlsh"
  marker="$venv/installed-cqlsh-$CQLSH_VERSION"
  if [[ ! -f $marker || ! -x $bin ]]; then
    py=$(command -v python3) || die "python3 not found (needed for cqlsh)"
    t0=$(now_ms)
    say "cqlsh: creating venv $venv and installing PyPI cqlsh==$CQLSH_VERSION ..."
    rm -rf "$venv"
    "$py" -m venv "$venv" >&2 || die "cqlsh: 'python3 -m venv' failed (on Debian: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "cqlsh==$CQLSH_VERSION" >&2 \
      || die "cqlsh: pip install failed"
    touch "$marker"
    say "cqlsh: installed in $(elapsed "$t0") s"
  fi
  if running_pid cassandra >/dev/null 2>&1 && port_open "$CQL_PORT"; then
    local out
    if out=$("$bin" "$HOST" "$CQL_PORT" -e "SELECT release_version FROM system.local" 2>&1); then
      say "cqlsh: query against $HOST:$CQL_PORT OK: release_version $(grep -v WARNING <<<"$out" | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1)"
    else
      say "cqlsh: query against the running Cassandra FAILED:"
      printf '%s\n' "$out" >&2
      exit 1
    fi
  fi
  echo "$bin"
}

cmd_cql() {
  [[ $# -ge 1 && -n $1 ]] || die "usage: $0 cql 'CQL STATEMENT'"
  port_open "$CQL_PORT" || die "cassandra: nothing listens on $HOST:$CQL_PORT"
  local rc=0
  cql_query "$1" || rc=$?
  ((rc == 0)) || die "cql: query failed (exit $rc)"
}

usage() {
  sed -n '/^# Usage:/,/^# status lines/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd=$1; shift
  if [[ $cmd == cql ]]; then cmd_cql "$@"; return; fi
  if [[ $cmd == -h || $cmd == --help || $cmd == help ]]; then usage 0; fi
  local which=${1:-all}
  [[ $# -le 1 ]] || die "too many arguments (see '$0 help')"
  local -a svcs
  case $which in
    all) svcs=(cassandra kafka) ;;
    cassandra | kafka) svcs=("$which") ;;
    *) die "unknown service '$which' (cassandra, kafka or all; see '$0 help')" ;;
  esac
  case $cmd in
    fetch) cmd_fetch "${svcs[@]}" ;;
    start) cmd_start "${svcs[@]}" ;;
    stop) cmd_stop "${svcs[@]}" ;;
    restart) cmd_stop "${svcs[@]}"; cmd_start "${svcs[@]}" ;;
    status) cmd_status "${svcs[@]}" ;;
    env) cmd_env "${svcs[@]}" ;;
    wipe) cmd_wipe "${svcs[@]}" ;;
    cqlsh) cmd_cqlsh ;;
    logs) local s; for s in "${svcs[@]}"; do echo "$SVC/$s/logs/stdout.log"; service_log "$s"; done ;;
    *) die "unknown command '$cmd' (see '$0 help')" ;;
  esac
}

main "$@"
