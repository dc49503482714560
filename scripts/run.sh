#!/usr/bin/env bash
# Set up (idempotent), start the whole system, and run simulated viewers: a few in the
# background sending reactions, one in the foreground printing the crowd's swarm as it arrives.
# Ctrl-C stops the viewers and then every component (scripts/stop_all.sh), also when the output
# goes through a pipe (scripts/run.sh | tee run.log).
#
#   scripts/run.sh [VIEWERS] [RATE]    VIEWERS simulated viewers (default 4), each sending RATE
#                                      emojis per second (default 20)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
case "${1:-}" in
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
VIEWERS="${1:-4}"
RATE="${2:-20}"

"$REPO_ROOT/scripts/setup.sh"
source "$REPO_ROOT/scripts/common.sh"

VIEWER_PIDS=()
stop_everything() {
  trap - INT TERM EXIT
  # The reader of a pipe (tee) is gone after a Ctrl-C: writing to it would kill this script
  # before it stopped anything. Say it on stderr, and never die of a closed pipe.
  trap '' PIPE
  exec 1>&2
  echo
  say "stopping"
  local pid
  for pid in "${VIEWER_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true  # our own children, not reaped yet: still theirs
  done
  wait 2>/dev/null || true
  "$REPO_ROOT/scripts/stop_all.sh" || true
}
trap stop_everything INT TERM EXIT

"$REPO_ROOT/scripts/start_all.sh"
say "the live page: $WEB_PAGE_URL (open it in a browser)"
say "metrics: every component's /metrics URL and its state in scripts/status.sh; a Prometheus config of them all: .venv/bin/python -m emojistream.ops.prometheus_config (docs/operations.md)"
if [ "$SPARK_UI_ENABLED" = "true" ]; then
  say "Spark's UI: http://$SPARK_UI_HOST:$SPARK_UI_PORT/ (or the next port if it was taken: see $VAR_DIR/logs/spark_aggregator.log)"
fi

for i in $(seq 2 "$VIEWERS"); do
  (cd "$REPO_ROOT" && exec "$VENV_PYTHON" client_simulator.py "viewer_$i" --rate "$RATE" --quiet \
     > "$VAR_DIR/logs/client_simulator_$i.log" 2>&1) &
  VIEWER_PIDS+=("$!")
done

say "watching the swarm as viewer_1 (Ctrl-C stops everything)"
cd "$REPO_ROOT"
"$VENV_PYTHON" client_simulator.py viewer_1 --rate "$RATE" || true
