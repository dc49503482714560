#!/usr/bin/env bash
# A local Apache Spark standalone cluster from the pyspark installation in .venv: one master and
# one or more workers, each a JVM of its own under this host's supervisord (which restarts one
# that dies). Their logs are in $VAR_DIR/logs (spark_master.log, spark_worker_N.log), their
# work folders in $VAR_DIR/spark-cluster. Their web UIs listen on SPARK_UI_HOST (127.0.0.1),
# without the kill buttons unless SPARK_UI_KILL_ENABLED=true (docs/operations.md).
#
#   scripts/spark_cluster.sh start [--workers N]   start the master and N workers (default:
#                                                  SPARK_WORKERS), wait until all are registered
#   scripts/spark_cluster.sh stop                  stop every worker, then the master
#   scripts/spark_cluster.sh status                say what runs (exit 0: master and workers,
#                                                  3: nothing, 1: only some)
#   scripts/spark_cluster.sh run master|worker N   one daemon in the foreground (supervisord's)
#
# Then run the aggregator on it:
#   SPARK_MASTER=spark://$SPARK_MASTER_HOST:$SPARK_MASTER_PORT .venv/bin/python spark_aggregator.py
# The connector jars travel to the executors through spark.jars; SPARK_EXECUTOR_MEMORY,
# SPARK_EXECUTOR_CORES and SPARK_CORES_MAX size what the job asks for. The same SPARK_MASTER
# setting points the aggregator at any other standalone cluster.
#
# Settings (environment): SPARK_MASTER_HOST, SPARK_MASTER_PORT, SPARK_MASTER_WEBUI_PORT,
# SPARK_WORKER_HOST, SPARK_WORKERS, SPARK_WORKER_CORES, SPARK_WORKER_MEMORY, SPARK_WORKER_WEBUI_PORT (worker N uses
# this + N - 1), SPARK_DAEMON_MEMORY (heap of the master and worker JVMs), VAR_DIR,
# SPARK_UI_HOST, SPARK_UI_KILL_ENABLED, SPARK_CLUSTER_START_TIMEOUT (seconds).
set -euo pipefail
source "$(dirname "$0")/common.sh"

CLUSTER_DIR="$VAR_DIR/spark-cluster"
START_TIMEOUT="${SPARK_CLUSTER_START_TIMEOUT:-90}"
MASTER_URL="spark://$SPARK_MASTER_HOST:$SPARK_MASTER_PORT"

spark_home() {
  [ -x "$VENV_PYTHON" ] || die "no Python environment: run scripts/setup.sh"
  local home
  home="$("$VENV_PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" \
    || die "pyspark is not installed in .venv: run scripts/setup.sh"
  [ -x "$home/bin/spark-class" ] || die "$home/bin/spark-class is missing; reinstall pyspark (scripts/setup.sh)"
  echo "$home"
}

# run_daemon CLASS ARGS...: one of Spark's daemons in the foreground, as supervisord runs it.
# spark-class builds the java command line and replaces itself with it. The web UIs bind to
# SPARK_LOCAL_IP (Spark has no other setting for them): SPARK_UI_HOST.
run_daemon() {
  SPARK_HOME="$(spark_home)"
  mkdir -p "$CLUSTER_DIR/work"
  export SPARK_HOME SPARK_DAEMON_MEMORY SPARK_LOCAL_IP="$SPARK_UI_HOST"
  export SPARK_DAEMON_JAVA_OPTS="-Dspark.ui.killEnabled=$SPARK_UI_KILL_ENABLED -Dlog4j2.configurationFile=$REPO_ROOT/config/spark-log4j2.properties"
  # The project's Log4j (lib/log4j, the brokers' version) ahead of pyspark's, as in the driver.
  [ -d "$REPO_ROOT/lib/log4j" ] || die "the project's Log4j is missing from lib/log4j: run scripts/setup.sh"
  export SPARK_DAEMON_CLASSPATH="$REPO_ROOT/lib/log4j/*"
  exec "$SPARK_HOME/bin/spark-class" "$@"
}

run() {
  case "${1:-}" in
    master) run_daemon org.apache.spark.deploy.master.Master --host "$SPARK_MASTER_HOST" \
              --port "$SPARK_MASTER_PORT" --webui-port "$SPARK_MASTER_WEBUI_PORT" ;;
    worker) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || die "run worker needs the worker's number"
            run_daemon org.apache.spark.deploy.worker.Worker --host "${SPARK_WORKER_HOST:-$SPARK_MASTER_HOST}" \
              --webui-port "$((SPARK_WORKER_WEBUI_PORT + $2 - 1))" --cores "$SPARK_WORKER_CORES" \
              --memory "$SPARK_WORKER_MEMORY" --work-dir "$CLUSTER_DIR/work/worker-$2" "$MASTER_URL" ;;
    *) die "run master, or run worker N" ;;
  esac
}

# state_of NAME: the daemon's "STATE PID" as this host's supervisord reports it.
state_of() { supervised state "$1" | { read -r _ state pid; echo "$state $pid"; }; }

# master_state: the master's JSON status (its web UI's /json/), empty when it does not answer.
master_state() {
  python3 - "http://$SPARK_UI_HOST:$SPARK_MASTER_WEBUI_PORT/json/" <<'PY' 2>/dev/null || true
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

# wait_for NAME DESCRIPTION COMMAND...: until COMMAND succeeds; die if NAME fails to start.
wait_for() {
  local name="$1" what="$2" deadline=$((SECONDS + START_TIMEOUT)) state
  shift 2
  until "$@"; do
    read -r state _ < <(state_of "$name")
    case "$state" in
      BACKOFF|FATAL|EXITED|STOPPED)
        tail -n 20 "$VAR_DIR/logs/$name.log" >&2 || true
        supervised stop "$name" >/dev/null
        die "$name exited during start-up (log above, in $VAR_DIR/logs/$name.log)" ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || die "$what within ${START_TIMEOUT}s; see $VAR_DIR/logs/$name.log"
    sleep 0.5
  done
}

workers_registered() { [ "$(alive_workers)" -ge "$1" ]; }

start() {
  command -v java >/dev/null || die "java not found: run scripts/setup.sh"
  spark_home >/dev/null
  local state pid port n
  read -r state pid < <(state_of spark_master)
  if [ "$state" = RUNNING ]; then
    say "the master already runs (pid $pid) at $MASTER_URL"
  else
    for port in "$SPARK_MASTER_PORT" "$SPARK_MASTER_WEBUI_PORT"; do
      ! port_open "$SPARK_MASTER_HOST" "$port" \
        || die "$SPARK_MASTER_HOST:$port is already taken by another process; set SPARK_MASTER_PORT / SPARK_MASTER_WEBUI_PORT"
    done
    read -r _ _ pid < <(supervised start spark_master)
    say "starting the master (pid $pid) at $MASTER_URL, web UI at http://$SPARK_UI_HOST:$SPARK_MASTER_WEBUI_PORT/"
    wait_for spark_master "the master did not answer at $MASTER_URL" \
      port_open "$SPARK_MASTER_HOST" "$SPARK_MASTER_PORT"
  fi
  for n in $(seq 1 "$WORKERS"); do
    read -r state pid < <(state_of "spark_worker_$n")
    if [ "$state" = RUNNING ]; then
      say "worker $n already runs (pid $pid)"
      continue
    fi
    read -r _ _ pid < <(supervised start "spark_worker_$n")
    say "starting worker $n (pid $pid): $SPARK_WORKER_CORES cores, $SPARK_WORKER_MEMORY"
  done
  for n in $(seq 1 "$WORKERS"); do
    wait_for "spark_worker_$n" "the master did not count $WORKERS worker(s) in" \
      workers_registered "$WORKERS"
  done
  say "the Spark cluster is up: SPARK_MASTER=$MASTER_URL ($(alive_workers) worker(s)), logs in $VAR_DIR/logs"
}

stop() {
  local state
  read -r state _ < <(state_of spark_master)
  if [ "$state" != RUNNING ] && ! supervised state --spark-cluster | grep -q RUNNING; then
    say "the Spark cluster is not running"
    return
  fi
  supervised down --spark-cluster >/dev/null
  say "the workers and the master stopped"
}

status() {
  local state pid n workers=0 master=0
  read -r state pid < <(state_of spark_master)
  if [ "$state" = RUNNING ]; then
    say "the master runs (pid $pid) at $MASTER_URL"
    master=1
  else
    say "the master is not running"
  fi
  for n in $(seq 1 "$WORKERS"); do
    read -r state pid < <(state_of "spark_worker_$n")
    if [ "$state" = RUNNING ]; then
      say "worker $n runs (pid $pid)"
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
if [ "$COMMAND" = run ]; then
  run "$@"
fi
WORKERS="$SPARK_WORKERS"
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) [ $# -ge 2 ] || die "--workers needs a number"; WORKERS="$2"; shift 2 ;;
    --workers=*) WORKERS="${1#--workers=}"; shift ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "the number of workers must be a positive integer, got '$WORKERS'"

export SPARK_WORKERS="$WORKERS"  # the table the supervisor's programs come from
case "$COMMAND" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
