#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. The tests start their own Kafka broker and Spark
# job on free ports with a temporary data folder, and stop them afterwards.
# Extra arguments go to pytest, for example: scripts/test.sh -k registration -x
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$REPO_ROOT/scripts/setup.sh"
cd "$REPO_ROOT"
exec .venv/bin/python -m pytest "$@"
