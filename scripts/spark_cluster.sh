#!/usr/bin/env bash
# A local Apache Spark standalone cluster from the pyspark installation in .venv: one master and
# one or more workers, each a JVM of its own. Logs, work folders and pid files live under
# $VAR_DIR/spark-cluster.
#
#   scripts/spark_cluster.sh start [--workers N]   start the master and N workers (default:
#                                                  SPARK_WORKERS), wait until all are registered
#   scripts/spark_cluster.sh stop                  stop every worker, then the master
#   scripts/spark_cluster.sh status                say what runs (exit 0: master and workers,
#                                                  3: nothing, 1: only some)
#
# Then run the aggregator on it:
#   SPARK_MASTER=spark://$SPARK_MASTER_HOST:$SPARK_MASTER_PORT .venv/bin/python spark_aggregator.py
# The connector jars travel to the executors through spark.jars; SPARK_EXECUTOR_MEMORY,
# SPARK_EXECUTOR_CORES and SPARK_CORES_MAX size what the job asks for. The same SPARK_MASTER
# setting points the aggregator at any other standalone cluster.
#
# Settings (environment): SPARK_MASTER_HOST, SPARK_MASTER_PORT, SPARK_MASTER_WEBUI_PORT,
# SPARK_WORKERS, SPARK_WORKER_CORES, SPARK_WORKER_MEMORY, SPARK_WORKER_WEBUI_PORT (worker N uses
# this + N - 1), SPARK_DAEMON_MEMORY (heap of the master and worker JVMs), VAR_DIR,
# SPARK_CLUSTER_START_TIMEOUT, SPARK_CLUSTER_STOP_TIMEOUT (seconds).
set -euo pipefail
source "$(dirname "$0")/common.sh"

CLUSTER_DIR="$VAR_DIR/spark-cluster"
START_TIMEOUT="${SPARK_CLUSTER_START_TIMEOUT:-90}"
STOP_TIMEOUT="${SPARK_CLUSTER_STOP_TIMEOUT:-20}"
MASTER_URL="spark://$SPARK_MASTER_HOST:$SPARK_MASTER_PORT"
MASTER_PID="$CLUSTER_DIR/master.pid"

spark_home() {
  [ -x "$VENV_PYTHON" ] || die "no Python environment: run scripts/setup.sh"
  local home
  home="$("$VENV_PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" \
    || die "pyspark is not installed in .venv: run scripts/setup.sh"
  [ -x "$home/bin/spark-class" ] || die "$home/bin/spark-class is missing; reinstall pyspark (scripts/setup.sh)"
  echo "$home"
}

# launch NAME CLASS ARGS...: run one of Spark's daemons in the background ($! is its pid) with its
# pid in $CLUSTER_DIR/NAME.pid and its output in $CLUSTER_DIR/logs/NAME.log.
launch() {
  local name="$1"; shift
  [ -f "$CLUSTER_DIR/logs/$name.log" ] && mv "$CLUSTER_DIR/logs/$name.log" "$CLUSTER_DIR/logs/$name.log.1"
  # spark-class builds the java command line and replaces itself with it, so the pid is the
  # JVM's. setsid: a session of its own, away from the terminal's Ctrl-C.
  SPARK_HOME="$SPARK_HOME" SPARK_DAEMON_MEMORY="$SPARK_DAEMON_MEMORY" \
    SPARK_LOG_DIR="$CLUSTER_DIR/logs" SPARK_PID_DIR="$CLUSTER_DIR" \
    setsid "$SPARK_HOME/bin/spark-class" "$@" > "$CLUSTER_DIR/logs/$name.log" 2>&1 < /dev/null &
  write_pid_file "$CLUSTER_DIR/$name.pid" "$!"
}

# master_state: the master's JSON status (its web UI's /json/), empty when it does not answer.
master_state() {
  python3 - "http://$SPARK_MASTER_HOST:$SPARK_MASTER_WEBUI_PORT/json/" <<'PY' 2>/dev/null || true
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())
PY
}

# alive_workers: how many workers the master counts as ALIVE.
alive_workers() {
  master_state | python3 -c '
import json, sys
text = sys.stdin.read()
print(sum(1 for w in json.loads(text)["workers"] if w["state"] == "ALIVE") if text else 0)'
}

# wait_for NAME PID_FILE DESCRIPTION COMMAND...: until COMMAND succeeds; die if NAME exits.
wait_for() {
  local name="$1" pid_file="$2" what="$3" deadline=$((SECONDS + START_TIMEOUT))
  shift 3
  until "$@"; do
    if ! pid_of "$pid_file" >/dev/null; then
      tail -n 20 "$CLUSTER_DIR/logs/$name.log" >&2 || true
      rm -f "$pid_file"
      die "$name exited during start-up (log above, in $CLUSTER_DIR/logs/$name.log)"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "$what within ${START_TIMEOUT}s; see $CLUSTER_DIR/logs/$name.log"
    sleep 0.5
  done
}

workers_registered() { [ "$(alive_workers)" -ge "$1" ]; }

start() {
  command -v java >/dev/null || die "java not found: run scripts/setup.sh"
  SPARK_HOME="$(spark_home)"
  mkdir -p "$CLUSTER_DIR/logs" "$CLUSTER_DIR/work"
  local pid
  if pid="$(pid_of "$MASTER_PID")"; then
    say "the master already runs (pid $pid) at $MASTER_URL"
  else
    local port
    for port in "$SPARK_MASTER_PORT" "$SPARK_MASTER_WEBUI_PORT"; do
      ! port_open "$SPARK_MASTER_HOST" "$port" \
        || die "$SPARK_MASTER_HOST:$port is already taken by another process; set SPARK_MASTER_PORT / SPARK_MASTER_WEBUI_PORT"
    done
    launch master org.apache.spark.deploy.master.Master --host "$SPARK_MASTER_HOST" \
      --port "$SPARK_MASTER_PORT" --webui-port "$SPARK_MASTER_WEBUI_PORT"
    say "starting the master (pid $!) at $MASTER_URL, web UI on port $SPARK_MASTER_WEBUI_PORT"
    wait_for master "$MASTER_PID" "the master did not answer at $MASTER_URL" \
      port_open "$SPARK_MASTER_HOST" "$SPARK_MASTER_PORT"
  fi
  local n pid_file
  for n in $(seq 1 "$WORKERS"); do
    pid_file="$CLUSTER_DIR/worker-$n.pid"
    if pid="$(pid_of "$pid_file")"; then
      say "worker $n already runs (pid $pid)"
      continue
    fi
    launch "worker-$n" org.apache.spark.deploy.worker.Worker --host "$SPARK_MASTER_HOST" \
      --webui-port "$((SPARK_WORKER_WEBUI_PORT + n - 1))" --cores "$SPARK_WORKER_CORES" \
      --memory "$SPARK_WORKER_MEMORY" --work-dir "$CLUSTER_DIR/work/worker-$n" "$MASTER_URL"
    say "starting worker $n (pid $!): $SPARK_WORKER_CORES cores, $SPARK_WORKER_MEMORY"
  done
  for n in $(seq 1 "$WORKERS"); do
    wait_for "worker-$n" "$CLUSTER_DIR/worker-$n.pid" \
      "the master did not count $WORKERS worker(s) in" workers_registered "$WORKERS"
  done
  say "the Spark cluster is up: SPARK_MASTER=$MASTER_URL ($(alive_workers) worker(s)), logs in $CLUSTER_DIR/logs"
}

stop() {
  local pid_file name stopped=0
  for pid_file in "$CLUSTER_DIR"/worker-*.pid; do
    [ -e "$pid_file" ] || continue
    name="$(basename "$pid_file" .pid)"
    { stop_pid_file "$pid_file" "$name" "$STOP_TIMEOUT" && say "${name/-/ } stopped"; } &
    stopped=1
  done
  wait
  if stop_pid_file "$MASTER_PID" master "$STOP_TIMEOUT"; then
    say "the master stopped"
    stopped=1
  fi
  [ "$stopped" -eq 1 ] || say "the Spark cluster is not running"
}

status() {
  local pid_file pid workers=0 master=0
  if pid="$(pid_of "$MASTER_PID")"; then
    say "the master runs (pid $pid) at $MASTER_URL"
    master=1
  else
    say "the master is not running"
  fi
  for pid_file in "$CLUSTER_DIR"/worker-*.pid; do
    [ -e "$pid_file" ] || continue
    if pid="$(pid_of "$pid_file")"; then
      say "$(basename "$pid_file" .pid | sed 's/-/ /') runs (pid $pid)"
      workers=$((workers + 1))
    fi
  done
  if [ "$master" -eq 1 ]; then
    say "the master counts $(alive_workers) live worker(s)"
  fi
  if [ "$master" -eq 0 ] && [ "$workers" -eq 0 ]; then
    return 3
  fi
  [ "$master" -eq 1 ] && [ "$workers" -ge 1 ] || return 1
}

COMMAND="${1:-}"
[ $# -gt 0 ] && shift
WORKERS="$SPARK_WORKERS"
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) [ $# -ge 2 ] || die "--workers needs a number"; WORKERS="$2"; shift 2 ;;
    --workers=*) WORKERS="${1#--workers=}"; shift ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "the number of workers must be a positive integer, got '$WORKERS'"

case "$COMMAND" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
