#!/usr/bin/env bash
# Show every component of this host (Kafka's brokers included): its state as its supervisord
# reports it, its pid, how long it has been up, how many times it crashed and was restarted, the
# URL of its Prometheus metrics, and for the Kafka consumers (publishers and subscribers) their
# lag: records of their source topic not consumed yet, as their own /metrics report it ("?" when
# it does not answer).
#
#   scripts/status.sh           a table
#   scripts/status.sh --json    the same as a JSON array, for machines
#
# Exit status: 0 when every component is up, 1 otherwise.
set -euo pipefail
source "$(dirname "$0")/common.sh"
show_help_if_asked "$@"
case "${1:-}" in
  ""|--json) ;;
  *) usage >&2; die "unknown option: $1" ;;
esac
[ -x "$VENV_PYTHON" ] || die "no Python environment: run scripts/setup.sh"
supervised status "$@"
