#!/usr/bin/env bash
# Apache Kafka in KRaft mode (no ZooKeeper), on this machine: by default a single node that is
# both broker and controller; with --brokers N (or KAFKA_BROKERS=N) a cluster of N such
# combined nodes, whose controllers form one quorum, so that topics can have 3 replicas and
# the cluster survives the loss of a node.
#
#   scripts/kafka.sh start [--brokers N]    format the storage on first use, start, wait until
#                                           every broker answers (and, for N > 1, has joined)
#   scripts/kafka.sh stop [--brokers N]     stop every broker of $VAR_DIR/kafka (SIGTERM, then
#                                           SIGKILL after a grace period)
#   scripts/kafka.sh status [--brokers N]   say which brokers run (exit 0: all, 3: none, 1: some)
#   scripts/kafka.sh run K                  run broker K in the foreground (what the host's
#                                           supervisord runs: it restarts a broker that dies)
#
# One broker keeps its data and logs in $VAR_DIR/kafka; broker K of a cluster keeps
# them in $VAR_DIR/kafka/broker-K and listens on KAFKA_PORT + (K-1)*KAFKA_PORT_STEP, its
# controller on KAFKA_CONTROLLER_PORT + (K-1)*KAFKA_PORT_STEP. Set KAFKA_BROKERS=N rather than
# --brokers N alone, so that the clients' KAFKA_BOOTSTRAP_SERVERS lists every broker.
#
# Each broker carries the Prometheus JMX exporter's Java agent (lib/jmx-exporter, fetched by
# scripts/setup.sh; rules in config/kafka-jmx-exporter.yaml): broker K's metrics are at
# http://KAFKA_HOST:(KAFKA_METRICS_PORT + K - 1)/metrics; KAFKA_METRICS_PORT=0 leaves it out.
#
# With KAFKA_VOTERS ("1@host1:9093,2@host2:9093,..."), each broker has a host of its own
# (docs/deploy.md): `run K` listens on KAFKA_HOST:KAFKA_PORT and formats its storage with
# KAFKA_CLUSTER_ID.
#
# Settings (environment): KAFKA_BROKERS, KAFKA_HOST, KAFKA_PORT, KAFKA_CONTROLLER_PORT,
# KAFKA_PORT_STEP, KAFKA_METRICS_PORT, KAFKA_HEAP, KAFKA_VOTERS, KAFKA_CLUSTER_ID, VAR_DIR,
# KAFKA_HOME (an existing Kafka distribution instead of the jars in lib/kafka),
# KAFKA_START_TIMEOUT (seconds).
set -euo pipefail
source "$(dirname "$0")/common.sh"

START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
# The cluster's node count, written when its storage is formatted: the quorum's voters are
# fixed then.
CLUSTER_SIZE_FILE="$KAFKA_VAR_DIR/cluster-brokers"

# node_dir K: where broker K of BROKERS keeps its files.
node_dir() {
  if [ "$BROKERS" -eq 1 ]; then echo "$KAFKA_VAR_DIR"; else echo "$KAFKA_VAR_DIR/broker-$1"; fi
}
# With KAFKA_VOTERS every broker has a host of its own, and the same ports.
node_step() { if [ -n "$KAFKA_VOTERS" ]; then echo 0; else echo $((($1 - 1) * KAFKA_PORT_STEP)); fi; }
node_port() { echo $((KAFKA_PORT + $(node_step "$1"))); }
node_controller_port() { echo $((KAFKA_CONTROLLER_PORT + $(node_step "$1"))); }
# program K: broker K's name in the components' table and supervisord.
program() { if [ "$BROKERS" -eq 1 ]; then echo kafka; else echo "kafka_$1"; fi; }
# node_metrics_port K: where broker K's JMX exporter listens (0: no exporter).
node_metrics_port() {
  if [ "$KAFKA_METRICS_PORT" -eq 0 ]; then echo 0; else echo $((KAFKA_METRICS_PORT + $1 - 1)); fi
}
node_name() {
  if [ "$BROKERS" -eq 1 ]; then echo "Kafka"; else echo "Kafka broker $1"; fi
}

quorum_voters() {
  if [ -n "$KAFKA_VOTERS" ]; then echo "$KAFKA_VOTERS"; return; fi
  local k voters=""
  for k in $(seq 1 "$BROKERS"); do
    voters="${voters:+$voters,}$k@$KAFKA_HOST:$(node_controller_port "$k")"
  done
  echo "$voters"
}

bootstrap_list() {
  local k list=""
  for k in $(seq 1 "$BROKERS"); do
    list="${list:+$list,}$KAFKA_HOST:$(node_port "$k")"
  done
  echo "$list"
}

# write_properties K: broker K's server.properties, from the settings.
write_properties() {
  local k="$1" dir port controller_port replicas min_isr
  dir="$(node_dir "$k")"; port="$(node_port "$k")"; controller_port="$(node_controller_port "$k")"
  # Internal topics get the replication of every topic (emojistream/topology.py: topic_replicas).
  read -r replicas min_isr < <(cd "$REPO_ROOT" && python3 -m emojistream.config --topic-replication "$BROKERS")
  [ "$min_isr" -gt 0 ] || min_isr=1
  cat > "$dir/server.properties" <<PROPS
# Written by scripts/kafka.sh on every start; edit the settings, not this file.
process.roles=broker,controller
node.id=$k
controller.quorum.voters=$(quorum_voters)
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$KAFKA_HOST:$port,CONTROLLER://$KAFKA_HOST:$controller_port
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$port
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
# Topics are created by scripts/create_topics.sh, so a mistyped name fails instead of
# silently creating a new topic.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$replicas
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
# Sized for a small machine (2 cores): few threads, short retention.
num.network.threads=2
num.io.threads=4
background.threads=4
num.replica.fetchers=1
log.retention.hours=24
log.segment.bytes=268435456
PROPS
}

java_opts() {
  echo "-Xms$KAFKA_HEAP -Xmx$KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20"
  echo "-XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent"
  echo "-Djava.awt.headless=true -Dkafka.logs.dir=$1"
  echo "-Dlog4j2.configurationFile=$REPO_ROOT/config/kafka-log4j2.properties"
}

# jmx_exporter_opts K: the JVM option that loads the JMX exporter into broker K, if any.
jmx_exporter_opts() {
  local port jar
  port="$(node_metrics_port "$1")"
  [ "$port" -ne 0 ] || return 0
  jar="$(ls "$REPO_ROOT"/lib/jmx-exporter/jmx_prometheus_javaagent-*.jar 2>/dev/null | head -n 1)"
  [ -n "$jar" ] || die "the JMX exporter's agent is missing from lib/jmx-exporter: run scripts/setup.sh (or set KAFKA_METRICS_PORT=0)"
  echo "-javaagent:$jar=$KAFKA_HOST:$port:$REPO_ROOT/config/kafka-jmx-exporter.yaml"
}

kafka_storage_tool() {
  java -cp "$(kafka_classpath)" \
    -Dlog4j2.configurationFile="$REPO_ROOT/config/kafka-tools-log4j2.properties" \
    kafka.tools.StorageTool "$@"
}

# cluster_id: the id every node is formatted with: a new one for a single node, the one chosen
# for the cluster's first node for the others.
cluster_id() {
  local id_file="$KAFKA_VAR_DIR/cluster.id"
  if [ -n "$KAFKA_CLUSTER_ID" ]; then echo "$KAFKA_CLUSTER_ID"; return; fi
  if [ "$BROKERS" -eq 1 ]; then
    kafka_storage_tool random-uuid
    return
  fi
  if [ ! -s "$id_file" ]; then
    kafka_storage_tool random-uuid > "$id_file"
  fi
  cat "$id_file"
}

# format_storage_once K: format broker K's storage unless it already holds a cluster's data.
format_storage_once() {
  local dir id
  dir="$(node_dir "$1")"
  if [ -f "$dir/data/meta.properties" ]; then
    return
  fi
  id="$(cluster_id)"
  say "formatting storage in $dir/data (cluster id $id)"
  kafka_storage_tool format -t "$id" -c "$dir/server.properties" >/dev/null
}

# check_cluster_size: a cluster's quorum is fixed when it is formatted; refuse another size.
check_cluster_size() {
  [ "$BROKERS" -gt 1 ] && [ -z "$KAFKA_VOTERS" ] || return 0
  if [ -f "$CLUSTER_SIZE_FILE" ]; then
    local formatted
    formatted="$(cat "$CLUSTER_SIZE_FILE")"
    [ "$formatted" -eq "$BROKERS" ] || die "the cluster in $KAFKA_VAR_DIR was formatted for \
$formatted brokers; start it with --brokers $formatted, or remove $KAFKA_VAR_DIR/broker-* and \
$CLUSTER_SIZE_FILE to start afresh"
  else
    echo "$BROKERS" > "$CLUSTER_SIZE_FILE"
  fi
}

# state_of K: broker K's "STATE PID" as its supervisord reports it.
state_of() {
  supervised state "$(program "$1")" | { read -r _ state pid; echo "$state $pid"; }
}

# start_node K: have supervisord start broker K unless it runs.
start_node() {
  local k="$1" port name state pid
  port="$(node_port "$k")"; name="$(node_name "$k")"
  read -r state pid < <(state_of "$k")
  if [ "$state" = RUNNING ] || [ "$state" = STARTING ]; then
    say "$name already runs (pid $pid) on $KAFKA_HOST:$port"
    return
  fi
  if port_open "$KAFKA_HOST" "$port"; then
    die "$KAFKA_HOST:$port is already taken by another process; set KAFKA_PORT"
  fi
  if port_open "$KAFKA_HOST" "$(node_controller_port "$k")"; then
    die "$KAFKA_HOST:$(node_controller_port "$k") is already taken by another process; set KAFKA_CONTROLLER_PORT"
  fi
  read -r _ _ pid < <(supervised start "$(program "$k")")
  say "starting $name (pid $pid) on $KAFKA_HOST:$port, logs in $(node_dir "$k")/logs"
  [ "$(node_metrics_port "$k")" -eq 0 ] || say "$name's metrics: http://$KAFKA_HOST:$(node_metrics_port "$k")/metrics"
}

# run_node K: broker K in the foreground (supervisord's program for it).
run_node() {
  local k="$1" dir agent=""
  dir="$(node_dir "$k")"
  mkdir -p "$dir/data" "$dir/logs"
  check_cluster_size
  write_properties "$k"
  format_storage_once "$k"
  # A taken metrics port costs the broker its metrics, not its start (as for every component).
  if [ "$(node_metrics_port "$k")" -ne 0 ] && port_open "$KAFKA_HOST" "$(node_metrics_port "$k")"; then
    say "WARNING: $KAFKA_HOST:$(node_metrics_port "$k") is already taken: $(node_name "$k") starts without its metrics (set KAFKA_METRICS_PORT)" >&2
  else
    agent="$(jmx_exporter_opts "$k")"
  fi
  # shellcheck disable=SC2046
  exec java $(java_opts "$dir/logs") $agent -cp "$(kafka_classpath)" kafka.Kafka "$dir/server.properties"
}

# wait_for_node K: until broker K accepts connections; die if it fails to start or takes too long.
wait_for_node() {
  local k="$1" port name state deadline=$((SECONDS + START_TIMEOUT))
  port="$(node_port "$k")"; name="$(node_name "$k")"
  until port_open "$KAFKA_HOST" "$port"; do
    read -r state _ < <(state_of "$k")
    case "$state" in
      BACKOFF|FATAL|EXITED|STOPPED)
        tail -n 30 "$VAR_DIR/logs/$(program "$k").log" >&2 2>/dev/null || true
        supervised stop "$(program "$k")" >/dev/null
        die "$name exited during start-up (logs above, in $VAR_DIR/logs/$(program "$k").log)" ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] \
      || die "$name did not answer on $KAFKA_HOST:$port within ${START_TIMEOUT}s; see $VAR_DIR/logs/$(program "$k").log"
    sleep 0.2
  done
  say "$name is up on $KAFKA_HOST:$port"
}

# wait_for_cluster: until the controllers count every broker in, so that topics with as many
# replicas can be created at once.
wait_for_cluster() {
  [ "$BROKERS" -gt 1 ] && [ -x "$VENV_PYTHON" ] || return 0
  (cd "$REPO_ROOT" && KAFKA_BOOTSTRAP_SERVERS="$(bootstrap_list)" "$VENV_PYTHON" -c '
import logging, sys
from emojistream import config
from emojistream.ops import topics
logging.basicConfig(level=logging.INFO, format="kafka.sh: %(message)s")
logging.getLogger("kafka").setLevel(logging.WARNING)
count, timeout = int(sys.argv[1]), float(sys.argv[2])
sys.exit(0 if topics.wait_for_brokers(config.load(), count, timeout) else 1)
' "$BROKERS" "$START_TIMEOUT") || die "the $BROKERS brokers did not form one cluster within ${START_TIMEOUT}s; see $KAFKA_VAR_DIR/broker-*/logs"
  say "the cluster of $BROKERS brokers is up: KAFKA_BOOTSTRAP_SERVERS=$(bootstrap_list)"
  if [ "$KAFKA_BOOTSTRAP_SERVERS" != "$(bootstrap_list)" ]; then
    say "note: the clients' KAFKA_BOOTSTRAP_SERVERS is $KAFKA_BOOTSTRAP_SERVERS; set KAFKA_BROKERS=$BROKERS (or KAFKA_BOOTSTRAP_SERVERS) so that it lists every broker"
  fi
}

start() {
  command -v java >/dev/null || die "java not found: run scripts/setup.sh"
  mkdir -p "$KAFKA_VAR_DIR"
  check_cluster_size
  # Chosen once, before the brokers start formatting their storage together.
  [ "$BROKERS" -eq 1 ] || cluster_id >/dev/null
  local k
  for k in $(seq 1 "$BROKERS"); do
    start_node "$k"
  done
  for k in $(seq 1 "$BROKERS"); do
    wait_for_node "$k"
  done
  wait_for_cluster
}

stop() {
  local k name state running=0
  for k in $(seq 1 "$BROKERS"); do
    read -r state _ < <(state_of "$k")
    [ "$state" = STOPPED ] || running=1
  done
  if [ "$running" -eq 0 ]; then
    say "Kafka is not running"
    return
  fi
  # All at once (one supervisord call): a controller quorum that loses its majority one node at
  # a time would make the last nodes wait for it until the grace period ends.
  supervised down --kafka-only >/dev/null
  for k in $(seq 1 "$BROKERS"); do
    say "$(node_name "$k") stopped"
  done
}

status() {
  local k state pid running=0
  for k in $(seq 1 "$BROKERS"); do
    read -r state pid < <(state_of "$k")
    if [ "$state" = RUNNING ]; then
      say "$(node_name "$k") runs (pid $pid) on $KAFKA_HOST:$(node_port "$k")"
      running=$((running + 1))
    elif [ "$BROKERS" -gt 1 ]; then
      say "$(node_name "$k") is not running"
    fi
  done
  if [ "$running" -eq 0 ]; then
    say "Kafka is not running"
    return 3
  fi
  [ "$running" -eq "$BROKERS" ] || return 1
}

COMMAND="${1:-}"
[ $# -gt 0 ] && shift
BROKERS="$KAFKA_BROKERS"
RUN_NODE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --brokers) [ $# -ge 2 ] || die "--brokers needs a number"; BROKERS="$2"; shift 2 ;;
    --brokers=*) BROKERS="${1#--brokers=}"; shift ;;
    [1-9]*) [ "$COMMAND" = run ] || die "unknown argument: $1"; RUN_NODE="$1"; shift ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
[[ "$BROKERS" =~ ^[1-9][0-9]*$ ]] || die "the number of brokers must be a positive integer, got '$BROKERS'"
if [ "$BROKERS" != "$KAFKA_BROKERS" ]; then
  # The configuration's checks (the brokers' ports must not overlap) for this many brokers.
  (cd "$REPO_ROOT" && KAFKA_BROKERS="$BROKERS" python3 -m emojistream.config --shell >/dev/null) \
    || die "no cluster of $BROKERS brokers with these settings (see above)"
fi

export KAFKA_BROKERS="$BROKERS"  # the table the supervisor's programs come from
case "$COMMAND" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  run) [ -n "$RUN_NODE" ] || die "run needs the broker's number"; run_node "$RUN_NODE" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
