#!/usr/bin/env bash
# Start one host's share of a deployment over several hosts: the components that TOPOLOGY_FILE
# places on HOST, under HOST's own supervisord, listening on HOST's address (docs/deploy.md).
# Set up first (scripts/setup.sh), and give every host the same three secrets (TOKEN_SECRET,
# SUBSCRIBER_KEY, ADMIN_KEY in the environment, or the files of VAR_DIR/secrets copied).
#
#   TOPOLOGY_FILE=deploy/topology.toml scripts/start_host.sh HOST
#
# Start the broker hosts first: the host of kafka_1 creates the topics once every broker is up.
# Stop a host's share with `TOPOLOGY_FILE=... EMOJISTREAM_HOST=HOST scripts/stop_all.sh`.
set -euo pipefail
source "$(dirname "$0")/common.sh"
show_help_if_asked "$@"
[ $# -eq 1 ] || { usage >&2; die "give the host's name"; }
[ -n "$TOPOLOGY_FILE" ] || die "set TOPOLOGY_FILE to the deployment's topology (docs/deploy.md)"
[ -x "$VENV_PYTHON" ] || die "no Python environment: run scripts/setup.sh"
export EMOJISTREAM_HOST="$1"
supervised up --host "$1" || die "$1's share did not start (see above)"
say "$1 is up; scripts/status.sh (with EMOJISTREAM_HOST=$1) shows its components"
