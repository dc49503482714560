#!/usr/bin/env bash
# Start the whole system in the background under this host's supervisord: Kafka, the topics,
# and every component (docs/operations.md#processes), each logging to $VAR_DIR/logs/NAME.log
# (rotated by size). Returns once every component is ready. Running it again starts only what
# is not running. supervisord restarts a component that dies. Stop everything with
# scripts/stop_all.sh.
#
#   scripts/start_all.sh              every component of this host
#   scripts/start_all.sh NAME...      only these (names as scripts/status.sh shows them)
#
# With TOPOLOGY_FILE set, this host's share of a deployment over several hosts (see
# scripts/start_host.sh and docs/deploy.md).
set -euo pipefail
source "$(dirname "$0")/common.sh"
show_help_if_asked "$@"
[ -x "$VENV_PYTHON" ] || die "no Python environment: run scripts/setup.sh"
supervised up "$@" || die "the system did not start (see above)"
say "the system is up: ingest http://$API_HOST:$API_PORT, registration http://$REGISTRATION_HOST:$REGISTRATION_PORT, logs in $VAR_DIR/logs; scripts/status.sh shows every component and its metrics"
