#!/usr/bin/env bash
# Show every component of the system (Kafka's brokers included): its name, its pid (from the pid
# files that start_all.sh and kafka.sh write, checked to still name that process), whether it
# is up, the URL of its Prometheus metrics, and for the Kafka consumers (publishers and
# subscribers) their lag: records of their source topic not consumed yet, as their own
# /metrics report it ("?" when it does not answer).
#
#   scripts/status.sh           a table
#   scripts/status.sh --json    the same as a JSON array, for machines
#
# Exit status: 0 when every component is up, 1 otherwise.
set -euo pipefail
source "$(dirname "$0")/common.sh"
show_help_if_asked "$@"
JSON=()
case "${1:-}" in
  "") ;;
  --json) JSON=(--json) ;;
  *) usage >&2; die "unknown option: $1" ;;
esac
[ -x "$VENV_PYTHON" ] || die "no Python environment: run scripts/setup.sh"

PIDS=()
while read -r name pid_file; do
  if pid="$(pid_of "$pid_file")"; then
    PIDS+=("$name=$pid")
  else
    PIDS+=("$name=-")
  fi
done < <(cd "$REPO_ROOT" && "$VENV_PYTHON" -m emojistream.ops.status --components)

cd "$REPO_ROOT"
exec "$VENV_PYTHON" -m emojistream.ops.status "${JSON[@]}" "${PIDS[@]}"
