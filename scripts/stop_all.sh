#!/usr/bin/env bash
# Stop every component started by scripts/start_all.sh, through this host's supervisord: the
# last started first (ingest, publishers, subscribers, registration, WebSocket servers, the
# aggregator), Kafka last, then supervisord itself. Each gets SIGTERM to finish cleanly, then
# SIGKILL (with what it started) after its grace period.
#
#   scripts/stop_all.sh              everything
#   scripts/stop_all.sh NAME...      only these components (as scripts/status.sh names them,
#                                    e.g. spark_aggregator ws_server_2); the rest keeps running
set -euo pipefail
source "$(dirname "$0")/common.sh"
show_help_if_asked "$@"
supervised down "$@"
