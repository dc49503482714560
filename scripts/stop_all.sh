#!/usr/bin/env bash
# Stop every component started by scripts/start_all.sh (by the pids in $VAR_DIR/run), viewers and
# ingest first, Kafka last. Each gets SIGTERM to finish cleanly, then SIGKILL after a grace period.
set -euo pipefail
source "$(dirname "$0")/common.sh"
show_help_if_asked "$@"

RUN_DIR="$VAR_DIR/run"
GRACE_SECONDS="${STOP_GRACE_SECONDS:-20}"

# stop_component PID_FILE: stop the component, then what it started that outlived it.
stop_component() {
  local name pid
  name="$(basename "$1" .pid)"
  # Only the group of a component that runs: a stale file's pid, and its group, are another's.
  pid="$(pid_of "$1")" || pid=""
  if stop_pid_file "$1" "$name" "$GRACE_SECONDS"; then
    say "$name stopped"
  fi
  if [ -n "$pid" ]; then
    stop_leftovers "$pid" "$name"
  fi
}

# group_runs PGID: true while a process of the group runs (zombies, which nothing may reap when
# PID 1 does not, are not running).
group_runs() {
  ps -e -o pgid=,stat= | awk -v group="$1" '$1 == group && $2 !~ /^Z/ { found = 1 }
                                          END { exit !found }'
}

# stop_leftovers PGID NAME: start_all.sh starts each component in a process group of its own
# (setsid), with its children in it: the aggregator's Spark JVM exits soon after its Python
# driver, but a driver killed after the grace period may leave it running, and a new aggregator
# must not share the checkpoint with it. Wait a little for the group to empty, then SIGKILL it.
stop_leftovers() {
  local pgid="$1" name="$2" deadline=$((SECONDS + 10))
  while group_runs "$pgid"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "processes started by $name (process group $pgid) still run; killing them"
      kill -KILL -- "-$pgid" 2>/dev/null || true
      return
    fi
    sleep 0.2
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
