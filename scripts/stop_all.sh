#!/usr/bin/env bash
# Stop every component started by scripts/start_all.sh (by the pids in $VAR_DIR/run), viewers and
# ingest first, Kafka last. Each gets SIGTERM to finish cleanly, then SIGKILL after a grace period.
#
#   scripts/stop_all.sh              everything
#   scripts/stop_all.sh NAME...      only these components (as $VAR_DIR/run names them, e.g.
#                                    spark_aggregator ws_server_2); Kafka keeps running
set -euo pipefail
source "$(dirname "$0")/common.sh"
show_help_if_asked "$@"

RUN_DIR="$VAR_DIR/run"
GRACE_SECONDS="${STOP_GRACE_SECONDS:-20}"

# stop_component PID_FILE: stop the component, then what it started that outlived it.
stop_component() {
  local name
  name="$(basename "$1" .pid)"
  if stop_pid_file "$1" "$name" "$GRACE_SECONDS"; then
    say "$name stopped"
  fi
  stop_leftovers "$1" "$name"
}

# leftovers PID_FILE: the pids of the running processes of PID_FILE's component and of what it
# started: start_all.sh puts EMOJISTREAM_PID_FILE=PID_FILE in the component's environment, and
# its children inherit it. A zombie's environment is gone, so it does not count.
leftovers() {
  grep -lsxzF "EMOJISTREAM_PID_FILE=$1" /proc/[0-9]*/environ | cut -d/ -f3 || true
}

# stop_leftovers PID_FILE NAME: the aggregator's Spark JVM exits soon after its Python driver,
# but a driver killed after the grace period may leave it running, and a new aggregator must not
# share the checkpoint with it. Wait a little for the component's leftovers to exit, then SIGKILL
# them. They are found by their mark, not by the process group of PID_FILE's pid: once the
# component and its group are gone, that pid (and a group of that number) may be another
# process's, and a stale file may name another process from the start.
stop_leftovers() {
  local pid_file="$1" name="$2" deadline=$((SECONDS + 10)) left
  left="$(leftovers "$pid_file")"
  while [ -n "$left" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "processes started by $name (pids ${left//$'\n'/ }) still run; killing them"
      # shellcheck disable=SC2086
      kill -KILL $left 2>/dev/null || true
      return
    fi
    sleep 0.2
    left="$(leftovers "$pid_file")"
  done
}

stop_group() {
  local pattern="$1" pid_file
  for pid_file in "$RUN_DIR"/$pattern.pid; do
    [ -e "$pid_file" ] || continue
    stop_component "$pid_file" &
  done
  wait
}

if [ $# -gt 0 ]; then
  for name in "$@"; do
    [ -e "$RUN_DIR/$name.pid" ] || die "$name is not a component started by start_all.sh (no $RUN_DIR/$name.pid)"
    stop_component "$RUN_DIR/$name.pid"
  done
  exit 0
fi
if [ -d "$RUN_DIR" ]; then
  stop_group "client_simulator*"
  stop_group "emoji_api"
  stop_group "spark_aggregator"
  stop_group "main_publisher"
  stop_group "cluster_publisher_*"
  stop_group "subscriber_*"
  stop_group "registration_api"
  stop_group "ws_server_*"
  stop_group "*"
fi
"$REPO_ROOT/scripts/kafka.sh" stop
