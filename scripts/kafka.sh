#!/usr/bin/env bash
# A single-node Apache Kafka in KRaft mode: one process that is both broker and controller.
# Kafka 4 needs no ZooKeeper. Data, logs and the pid file live under $VAR_DIR/kafka.
#
#   scripts/kafka.sh start    format the storage on first use, start, wait until it answers
#   scripts/kafka.sh stop     stop it cleanly (SIGTERM, then SIGKILL after a grace period)
#   scripts/kafka.sh status   say whether it runs
#
# Settings (environment): KAFKA_HOST, KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_HEAP, VAR_DIR,
# KAFKA_HOME (use an existing Kafka distribution instead of the jars in lib/kafka).
set -euo pipefail
source "$(dirname "$0")/common.sh"

DATA_DIR="$KAFKA_VAR_DIR/data"
LOG_DIR="$KAFKA_VAR_DIR/logs"
PID_FILE="$KAFKA_VAR_DIR/kafka.pid"
PROPERTIES="$KAFKA_VAR_DIR/server.properties"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
}

write_properties() {
  cat > "$PROPERTIES" <<PROPS
# Written by scripts/kafka.sh on every start; edit the settings, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA_DIR
# Topics are created by scripts/create_topics.sh, so a mistyped name fails instead of
# silently creating a new topic.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Sized for a small machine (2 cores): few threads, short retention.
num.network.threads=2
num.io.threads=4
background.threads=4
log.retention.hours=24
log.segment.bytes=268435456
PROPS
}

java_opts() {
  echo "-Xms$KAFKA_HEAP -Xmx$KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20"
  echo "-XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent"
  echo "-Djava.awt.headless=true -Dkafka.logs.dir=$LOG_DIR"
  echo "-Dlog4j2.configurationFile=$REPO_ROOT/config/kafka-log4j2.properties"
}

format_storage_once() {
  if [ -f "$DATA_DIR/meta.properties" ]; then
    return
  fi
  local cluster_id
  cluster_id="$(java -cp "$(kafka_classpath)" \
    -Dlog4j2.configurationFile="$REPO_ROOT/config/kafka-tools-log4j2.properties" \
    kafka.tools.StorageTool random-uuid)"
  say "formatting storage in $DATA_DIR (cluster id $cluster_id)"
  java -cp "$(kafka_classpath)" \
    -Dlog4j2.configurationFile="$REPO_ROOT/config/kafka-tools-log4j2.properties" \
    kafka.tools.StorageTool format -t "$cluster_id" -c "$PROPERTIES" >/dev/null
}

start() {
  if pid_alive "$PID_FILE"; then
    say "Kafka already runs (pid $(cat "$PID_FILE")) on $KAFKA_HOST:$KAFKA_PORT"
    return
  fi
  if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
    die "$KAFKA_HOST:$KAFKA_PORT is already taken by another process; set KAFKA_PORT"
  fi
  command -v java >/dev/null || die "java not found: run scripts/setup.sh"
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  write_properties
  format_storage_once
  # shellcheck disable=SC2046
  setsid java $(java_opts) -cp "$(kafka_classpath)" kafka.Kafka "$PROPERTIES" \
    > "$LOG_DIR/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PID_FILE"
  say "starting Kafka (pid $!) on $KAFKA_HOST:$KAFKA_PORT, logs in $LOG_DIR"
  local waited=0
  until port_open "$KAFKA_HOST" "$KAFKA_PORT"; do
    if ! pid_alive "$PID_FILE"; then
      tail -n 30 "$LOG_DIR/server.log" "$LOG_DIR/stdout.log" >&2 2>/dev/null || true
      rm -f "$PID_FILE"
      die "Kafka exited during start-up (logs above)"
    fi
    if [ "$waited" -ge "$((START_TIMEOUT * 5))" ]; then
      die "Kafka did not answer on $KAFKA_HOST:$KAFKA_PORT within ${START_TIMEOUT}s; see $LOG_DIR"
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  say "Kafka is up on $KAFKA_HOST:$KAFKA_PORT"
}

stop() {
  if stop_pid_file "$PID_FILE" Kafka "$STOP_TIMEOUT"; then
    say "Kafka stopped"
  else
    say "Kafka is not running"
  fi
}

status() {
  if pid_alive "$PID_FILE"; then
    say "Kafka runs (pid $(cat "$PID_FILE")) on $KAFKA_HOST:$KAFKA_PORT"
  else
    say "Kafka is not running"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
