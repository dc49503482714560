#!/usr/bin/env bash
# Create the pipeline's topics if they do not exist: emoji-events, aggregated-emoji-topic and,
# for each cluster N, clusterN-topic and clusterN-topic-subscribers. Idempotent.
# Options (see --help): --clusters N, --events-partitions P, --partitions P, --replication-factor R.
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ -x "$VENV_PYTHON" ] || die "no Python environment: run scripts/setup.sh"
cd "$REPO_ROOT"
exec "$VENV_PYTHON" -m emojistream.ops.topics "$@"
