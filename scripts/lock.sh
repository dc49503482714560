#!/usr/bin/env bash
# Compile requirements.lock, the whole Python dependency tree with hashes, from the direct pins
# of requirements.txt. Run it after changing requirements.txt; scripts/setup.sh installs the lock
# with pip's --require-hashes, so nothing unpinned or altered is ever installed.
#
#   scripts/lock.sh          uses uv (pinned below), installed into var/lock-tools on first use
set -euo pipefail
source "$(dirname "$0")/common.sh"
show_help_if_asked "$@"

UV_VERSION="0.13.9"
TOOLS="$VAR_DIR/lock-tools"
if [ ! -x "$TOOLS/bin/uv" ] || [ "$("$TOOLS/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  say "installing uv $UV_VERSION into $TOOLS"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
cd "$REPO_ROOT"
"$TOOLS/bin/uv" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
  --custom-compile-command "scripts/lock.sh" --output-file requirements.lock requirements.txt
say "wrote requirements.lock"
