#!/usr/bin/env bash
# Set up (idempotent), check the code with ruff and mypy, and run the tests.
#
#   scripts/test.sh            every test: unit tests, and integration tests against a real Kafka
#                              broker, Spark jobs, the whole system and Chromium, which the tests
#                              start on free ports with a temporary data folder and stop afterwards
#   scripts/test.sh --fast     the unit tier only: no JVM, no broker, no browser (under a minute)
#
# Extra arguments go to pytest, for example: scripts/test.sh --fast -k registration -x
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
case "${1:-}" in
  -h|--help) sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
"$REPO_ROOT/scripts/setup.sh"
cd "$REPO_ROOT"
.venv/bin/ruff check .
.venv/bin/mypy  # over emojistream/ (pyproject.toml)
UNIT_TIER="not (kafka or spark or stack or browser)"  # the markers of tests/conftest.py
if [ "${1:-}" = "--fast" ]; then
  shift
  # The unit tests mostly wait on their own processes, so four pytest workers share the two
  # cores well.
  exec .venv/bin/python -m pytest -m "$UNIT_TIER" -n 4 "$@"
fi
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# Every test: the unit tier in four workers as above, then the integration tier one test at a
# time (each starts its own JVMs, which need the two cores); the run fails if either fails.
status=0
.venv/bin/python -m pytest -m "$UNIT_TIER" -n 4 || status=$?
.venv/bin/python -m pytest -m "not ($UNIT_TIER)" || status=$?
exit "$status"
