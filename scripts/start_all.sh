#!/usr/bin/env bash
# Start the whole system in the background: Kafka (if it is not running), the topics, and every
# component, each with its log in $VAR_DIR/logs/NAME.log and its pid in $VAR_DIR/run/NAME.pid.
# Returns once every component is ready. Running it again starts only what is not running.
# Stop everything with scripts/stop_all.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"
show_help_if_asked "$@"
[ -x "$VENV_PYTHON" ] || die "no Python environment: run scripts/setup.sh"

RUN_DIR="$VAR_DIR/run"
LOG_DIR="$VAR_DIR/logs"
READY_TIMEOUT="${READY_TIMEOUT:-120}"
mkdir -p "$RUN_DIR" "$LOG_DIR"
# Each WebSocket server holds one file descriptor per viewer.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

STARTED=()

# start NAME ARGS...: run "python ARGS..." in the background unless NAME already runs.
start() {
  local name="$1"; shift
  local pid_file="$RUN_DIR/$name.pid" pid
  if pid="$(pid_of "$pid_file")"; then
    say "$name already runs (pid $pid)"
    return
  fi
  [ -f "$LOG_DIR/$name.log" ] && mv "$LOG_DIR/$name.log" "$LOG_DIR/$name.log.1"
  # setsid: a session of its own, so a Ctrl-C in the terminal does not reach it; stop_all.sh does.
  # EMOJISTREAM_PID_FILE marks the component's processes, its children's too (they inherit it):
  # stop_all.sh finds what the component leaves behind by it.
  (cd "$REPO_ROOT" && EMOJISTREAM_PID_FILE="$pid_file" exec setsid "$VENV_PYTHON" "$@" \
     > "$LOG_DIR/$name.log" 2>&1 < /dev/null) &
  write_pid_file "$pid_file" "$!"
  STARTED+=("$name")
}

# is_ready NAME: the component answers its health check, or (for the Kafka consumers, which
# serve nothing) logged a line with "ready" once it joined its consumer group.
is_ready() {
  local name="$1" url=""
  case "$name" in
    emoji_api) url="http://$API_HOST:$API_PORT/health" ;;
    registration_api) url="http://$REGISTRATION_HOST:$REGISTRATION_PORT/health" ;;
    ws_server_*) url="http://$WS_HOST:$((WS_FIRST_PORT + ${name#ws_server_} - 1))/health" ;;
  esac
  if [ -n "$url" ]; then
    "$VENV_PYTHON" - "$url" <<'PY' 2>/dev/null
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
PY
  else
    grep -q " ready" "$LOG_DIR/$name.log"
  fi
}

wait_until_ready() {
  local name deadline=$((SECONDS + READY_TIMEOUT))
  for name in "${STARTED[@]}"; do
    until is_ready "$name"; do
      if ! pid_of "$RUN_DIR/$name.pid" >/dev/null; then
        tail -n 15 "$LOG_DIR/$name.log" >&2
        die "$name exited during start-up (log above, in $LOG_DIR/$name.log)"
      fi
      [ "$SECONDS" -lt "$deadline" ] || die "$name is not ready after ${READY_TIMEOUT}s; see $LOG_DIR/$name.log"
      sleep 0.5
    done
    say "$name is ready"
  done
}

"$REPO_ROOT/scripts/kafka.sh" start
"$REPO_ROOT/scripts/create_topics.sh" 2>> "$LOG_DIR/create_topics.log" \
  || die "could not create the topics; see $LOG_DIR/create_topics.log"

start spark_aggregator spark_aggregator.py
for n in $(seq 1 "$CLUSTER_COUNT"); do
  start "ws_server_$n" ws_server.py --cluster "$n"
done
start registration_api registration_api.py
for n in $(seq 1 "$CLUSTER_COUNT"); do
  for k in $(seq 1 "$SUBSCRIBERS_PER_CLUSTER"); do
    start "subscriber_${n}_$k" subscriber.py --cluster "$n" --id "$k"
  done
  start "cluster_publisher_$n" cluster_publisher.py --cluster "$n"
done
start main_publisher main_publisher.py
start emoji_api emoji_api.py

wait_until_ready
say "the system is up: ingest http://$API_HOST:$API_PORT, registration http://$REGISTRATION_HOST:$REGISTRATION_PORT, logs in $LOG_DIR; scripts/status.sh shows every component and its metrics"
