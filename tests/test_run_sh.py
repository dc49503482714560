"""scripts/run.sh with its output piped (`scripts/run.sh | tee run.log`), stopped by a Ctrl-C:
the terminal's SIGINT reaches the whole foreground process group (run.sh, its viewer and the
reader of the pipe), the reader dies first, and run.sh must still stop every component (issue
20: its trap used to write to the dead pipe and die of SIGPIPE, leaving all of them up).
A small system: one cluster, one subscriber."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from testkit.processes import component_status, supervisor_runs
from testkit.sandbox import isolated_env
from tests.services import REPO_ROOT, run_script, wait_until

pytestmark = pytest.mark.stack


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = open(f"/proc/{pid}/stat").read()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_ctrl_c_on_a_piped_run_sh_stops_every_component(tmp_path):
    env = dict(isolated_env(tmp_path / "var", cluster_count=1), SUBSCRIBERS_PER_CLUSTER="1")
    out, err = tmp_path / "run.log", tmp_path / "run.err"
    # The shell, run.sh and tee in a session of their own: its process group is the shell's pid,
    # as a terminal's foreground job.
    with open(err, "w") as errors:
        shell = subprocess.Popen(["bash", "-c", f"scripts/run.sh 1 5 | tee {out} >/dev/null"],
                                 env=env, cwd=REPO_ROOT, stderr=errors, start_new_session=True)
    try:
        wait_until(lambda: "watching the swarm as viewer_1" in out.read_text(encoding="utf-8",
                                                                                  errors="replace")
                   if out.exists() else False, timeout_s=400, interval_s=1,
                   message=f"run.sh did not start the system:\n{err.read_text()}")
        pids = {name: row["pid"] for name, row in component_status(env).items()}
        assert len(pids) == 8 and all(pids.values()), pids  # 1 broker ... 1 ingest API
        os.killpg(shell.pid, signal.SIGINT)  # Ctrl-C
        assert shell.wait(timeout=180) != 0
        assert "stopping" in err.read_text()
        wait_until(lambda: not any(alive(pid) for pid in pids.values()), timeout_s=30,
                   message=f"still running: {[n for n, p in pids.items() if alive(p)]}")
        assert not supervisor_runs(env)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
        if supervisor_runs(env):
            run_script("stop_all.sh", env=env, timeout=180, check=False)
