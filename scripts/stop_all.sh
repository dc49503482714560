#!/usr/bin/env bash
# Stop every component started by scripts/start_all.sh (by the pids in $VAR_DIR/run), viewers and
# ingest first, Kafka last. Each gets SIGTERM to finish cleanly, then SIGKILL after a grace period.
set -euo pipefail
source "$(dirname "$0")/common.sh"
show_help_if_asked "$@"

RUN_DIR="$VAR_DIR/run"
GRACE_SECONDS="${STOP_GRACE_SECONDS:-20}"

stop_component() {
  local name
  name="$(basename "$1" .pid)"
  if stop_pid_file "$1" "$name" "$GRACE_SECONDS"; then
    say "$name stopped"
  fi
}

stop_group() {
  local pattern="$1" pid_file
  for pid_file in "$RUN_DIR"/$pattern.pid; do
    [ -e "$pid_file" ] || continue
    stop_component "$pid_file" &
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
