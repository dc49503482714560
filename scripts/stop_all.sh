#!/usr/bin/env bash
# Stop every component started by scripts/start_all.sh (by the pids in $VAR_DIR/run), viewers and
# ingest first, Kafka last. Each gets SIGTERM to finish cleanly, then SIGKILL after a grace period.
set -euo pipefail
source "$(dirname "$0")/common.sh"
show_help_if_asked "$@"

RUN_DIR="$VAR_DIR/run"
GRACE_SECONDS="${STOP_GRACE_SECONDS:-20}"

# stop_pid_file FILE: stop the process whose pid FILE holds, then remove FILE.
stop_pid_file() {
  local pid_file="$1" name pid
  name="$(basename "$pid_file" .pid)"
  if ! pid_alive "$pid_file"; then
    rm -f "$pid_file"
    return
  fi
  pid="$(cat "$pid_file")"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + GRACE_SECONDS))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$name (pid $pid) did not stop within ${GRACE_SECONDS}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$pid_file"
  say "$name stopped"
}

stop_group() {
  local pattern="$1" pid_file
  for pid_file in "$RUN_DIR"/$pattern.pid; do
    [ -e "$pid_file" ] || continue
    stop_pid_file "$pid_file" &
  done
  wait
}

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
