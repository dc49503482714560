"""What the tests share beside their fixtures: the repository's scripts run to completion, and
the process helpers of testkit (components started as processes, stopped by their pid)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from testkit.processes import (  # noqa: F401
    REPO_ROOT,
    Service,
    ServiceFailed,
    get_json,
    running,
    wait_for_health,
)
from testkit.sandbox import free_port, free_port_run, isolated_env  # noqa: F401

# The whole system the tests share (tests/conftest.py: whole_system) has a second stream, and a
# browser is told these names resolve to this machine: the page's and the ingest API's.
OTHER_STREAM = "final-2026"
PAGE_HOST = "emoji.test"
API_HOST = "emoji-api.test"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)"
                      r" +[\w.]+: ")


def run_script(script: str, *args: str, env: dict, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess:
    """scripts/SCRIPT ARGS, to completion, its output captured."""
    return subprocess.run([str(REPO_ROOT / "scripts" / script), *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=check)


def common_sh(command: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """COMMAND run by bash with scripts/common.sh's helpers, as the scripts run them."""
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source scripts/common.sh; {command}"],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          check=check)


def process_start(pid: int) -> str:
    """The start of process PID as scripts/common.sh records it in a pid file ("PID START"):
    field 22 of /proc/PID/stat (clock ticks from the boot to the start) and the boot's id."""
    ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return f"{ticks}@{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}"


def still_sleeping(process: subprocess.Popen) -> bool:
    """The `sleep` started by this test still runs: it has not exited (poll reaps a zombie),
    signal 0 reaches its pid, and that pid is still `sleep`."""
    if process.poll() is not None:
        return False
    try:
        os.kill(process.pid, 0)
        return Path(f"/proc/{process.pid}/comm").read_text().strip() == "sleep"
    except (ProcessLookupError, FileNotFoundError):
        return False


def run(script: str, *args: str, env: dict, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """A top-level Python script of the repository, to completion, its output captured."""
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)


def wait_until(condition, timeout_s: float = 15, interval_s: float = 0.1, message: str = ""):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message or "condition not met in time"
        time.sleep(interval_s)


def assert_clean_log(text: str) -> None:
    """Only log lines in the project's format, and no traceback."""
    assert "Traceback" not in text, text
    assert all(LOG_LINE.match(line) for line in text.splitlines()), text

