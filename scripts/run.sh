#!/usr/bin/env bash
# Set up (idempotent), start the whole system, and run simulated viewers: a few in the
# background sending reactions, one in the foreground printing the crowd's swarm as it arrives.
# Ctrl-C stops the viewers and then every component (scripts/stop_all.sh).
#
#   scripts/run.sh [VIEWERS] [RATE]    VIEWERS simulated viewers (default 4), each sending RATE
#                                      emojis per second (default 20)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
case "${1:-}" in
  -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
VIEWERS="${1:-4}"
RATE="${2:-20}"

"$REPO_ROOT/scripts/setup.sh"
source "$REPO_ROOT/scripts/common.sh"

stop_everything() {
  trap - INT TERM EXIT
  echo
  say "stopping"
  "$REPO_ROOT/scripts/stop_all.sh"
}
trap stop_everything INT TERM EXIT

"$REPO_ROOT/scripts/start_all.sh"
say "the live page: $WEB_PAGE_URL (open it in a browser)"
say "metrics: every component's /metrics URL and its state in scripts/status.sh; Kafka's at http://$KAFKA_HOST:$KAFKA_METRICS_PORT/metrics; a Prometheus config of them all: .venv/bin/python -m emojistream.ops.prometheus_config (docs/operations.md)"
if [ "$SPARK_UI_ENABLED" = "true" ]; then
  say "Spark's UI: http://localhost:$SPARK_UI_PORT/ (or the next port if it was taken: see $VAR_DIR/logs/spark_aggregator.log)"
fi

RUN_DIR="$VAR_DIR/run"
for i in $(seq 2 "$VIEWERS"); do
  (cd "$REPO_ROOT" && exec "$VENV_PYTHON" client_simulator.py "viewer_$i" --rate "$RATE" --quiet \
     > "$VAR_DIR/logs/client_simulator_$i.log" 2>&1) &
  write_pid_file "$RUN_DIR/client_simulator_$i.pid" "$!"
done

say "watching the swarm as viewer_1 (Ctrl-C stops everything)"
cd "$REPO_ROOT"
"$VENV_PYTHON" client_simulator.py viewer_1 --rate "$RATE" || true
