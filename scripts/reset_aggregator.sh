#!/usr/bin/env bash
# Rebuild the aggregator's windows from a time on, with a new checkpoint: for a checkpoint whose
# watermark a bad record moved ahead of real time (viewers get no more updates; see
# docs/operations.md), or after a change of the windows' settings. The old checkpoint is kept,
# renamed, beside the new one.
#
#   scripts/reset_aggregator.sh [--replay-from TIME]
#
# TIME is an ISO-8601 time or how long ago (10m, 2h), not in the future (refused, with nothing
# stopped or changed): the aggregator counts again every event
# written to emoji-events since then and writes each window it then holds in full. Default: found
# in the old checkpoint (just before the batch that moved its watermark ahead of its clock).
# It stops the aggregator (through this host's supervisord), resets its checkpoint
# (spark_aggregator.py --reset-checkpoint) and starts it again (scripts/start_all.sh).
set -euo pipefail
source "$(dirname "$0")/common.sh"
show_help_if_asked "$@"
[ -x "$VENV_PYTHON" ] || die "no Python environment: run scripts/setup.sh"

# Arguments that cannot work (a --replay-from in the future, ...) leave the aggregator running.
(cd "$REPO_ROOT" && "$VENV_PYTHON" spark_aggregator.py --reset-checkpoint "$@" --check-arguments) \
  || die "nothing was changed; the aggregator runs on"
supervised stop spark_aggregator >/dev/null
(cd "$REPO_ROOT" && "$VENV_PYTHON" spark_aggregator.py --reset-checkpoint "$@") \
  || die "the checkpoint was not reset (see above); the aggregator is stopped"
"$REPO_ROOT/scripts/start_all.sh" spark_aggregator
