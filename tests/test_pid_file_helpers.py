"""Pid files name a process by its pid and its start (scripts/common.sh: write_pid_file, pid_of,
stop_pid_file), so that a pid reused by another process after a crash or a reboot is never taken
for a component, nor signalled. Real processes, no JVM: scripts/stop_all.sh runs on a VAR_DIR
of its own where no Kafka was ever started.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.services import common_sh, isolated_env, process_start, run_script, still_sleeping

STALE = ["bare pid", "another start"]


@pytest.fixture
def env(tmp_path) -> dict:
    return isolated_env(tmp_path / "var", cluster_count=1)


def stale_content(kind: str, pid: int) -> str:
    """A pid file naming PID that is not PID's: the old format, or the start (in this boot) of
    another process."""
    if kind == "bare pid":
        return f"{pid}\n"
    return f"{pid} {process_start(os.getpid())}\n"


def stale_message(pid_file: Path, pid: int) -> str:
    return f"removing stale pid file {pid_file} (pid {pid} is another process now)"


@pytest.fixture
def orphaned_group():
    """(leader, member): a process group whose leader has exited while a member runs, as a
    daemon that forks twice leaves it. Pid LEADER runs nothing, yet group LEADER is not ours.
    The member is stopped at the end by its pid if it is still that process."""
    leader = subprocess.Popen(["sh", "-c", "sleep 600 > /dev/null 2>&1 & echo $!"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    member = int(leader.communicate(timeout=10)[0])
    start = process_start(member)
    try:
        yield leader.pid, member
    finally:
        try:
            still = process_start(member) == start
        except FileNotFoundError:
            still = False
        if still:
            os.kill(member, signal.SIGKILL)


def test_pid_of_names_the_process_write_pid_file_recorded(tmp_path, env, unrelated_process):
    pid, pid_file = unrelated_process.pid, tmp_path / "sleep.pid"
    result = common_sh(f"write_pid_file {pid_file} {pid}; pid_of {pid_file}", env)
    assert (result.stdout, result.stderr) == (f"{pid}\n", "")
    assert pid_file.read_text() == f"{pid} {process_start(pid)}\n"


@pytest.mark.parametrize("kind", STALE)
def test_pid_of_removes_a_file_that_names_another_process(tmp_path, env, unrelated_process,
                                                          kind):
    pid, pid_file = unrelated_process.pid, tmp_path / "sleep.pid"
    pid_file.write_text(stale_content(kind, pid))
    result = common_sh(f"pid_of {pid_file}", env, check=False)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"bash: {stale_message(pid_file, pid)}\n"
    assert not pid_file.exists()
    assert still_sleeping(unrelated_process)


def test_a_process_that_exited_gets_no_pid_file_and_runs_no_more(tmp_path, env):
    exited = subprocess.Popen(["true"])
    exited.wait()
    pid_file = tmp_path / "true.pid"
    written = common_sh(f"write_pid_file {pid_file} {exited.pid}", env)
    assert written.stdout == "" and not pid_file.exists()
    pid_file.write_text(f"{exited.pid} {process_start(os.getpid())}\n")
    result = common_sh(f"pid_of {pid_file}", env, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "")


def test_stop_pid_file_stops_the_process_it_recorded(tmp_path, env, unrelated_process):
    pid_file = tmp_path / "sleep.pid"
    common_sh(f"write_pid_file {pid_file} {unrelated_process.pid}; stop_pid_file {pid_file} "
              "sleep 10", env)
    assert unrelated_process.wait(timeout=10) == -signal.SIGTERM
    assert not pid_file.exists()


@pytest.mark.parametrize("kind", STALE)
def test_stop_pid_file_leaves_another_process_alive(tmp_path, env, unrelated_process, kind):
    pid, pid_file = unrelated_process.pid, tmp_path / "sleep.pid"
    pid_file.write_text(stale_content(kind, pid))
    result = common_sh(f"stop_pid_file {pid_file} sleep 1", env, check=False)
    assert result.returncode == 1
    assert stale_message(pid_file, pid) in result.stderr
    assert not pid_file.exists()
    assert still_sleeping(unrelated_process)


def test_stop_all_signals_no_process_nor_group_it_did_not_start(env, unrelated_process,
                                                                 orphaned_group):
    var, pid = Path(env["VAR_DIR"]), unrelated_process.pid
    stale = {var / "run" / "ws_server_1.pid": stale_content("bare pid", pid),
             var / "run" / "emoji_api.pid": stale_content("another start", pid),
             var / "kafka" / "kafka.pid": stale_content("bare pid", pid)}
    # A file of this boot naming a pid that runs nothing, whose group has a member: not ours,
    # although the pid was once a component's.
    leader, member = orphaned_group
    member_start = process_start(member)
    exited = {var / "run" / "spark_aggregator.pid": stale_content("another start", leader)}
    for pid_file, content in {**stale, **exited}.items():
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(content)

    stopped = run_script("stop_all.sh", env=env, timeout=120, check=False)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 0, output
    for pid_file in stale:
        assert stale_message(pid_file, pid) in output
    assert "killing" not in output
    assert still_sleeping(unrelated_process)
    assert process_start(member) == member_start
    assert not [path for path in {**stale, **exited} if path.exists()]


def test_stop_all_kills_what_a_component_left_behind(env):
    """A component's child that outlives it (the aggregator's Spark JVM) carries the mark
    start_all.sh gives the component's environment; stop_all.sh kills it after a while."""
    pid_file = Path(env["VAR_DIR"]) / "run" / "spark_aggregator.pid"
    pid_file.parent.mkdir(parents=True)
    component = subprocess.Popen(["true"])
    component.wait()
    pid_file.write_text(f"{component.pid} {process_start(os.getpid())}\n")
    left = subprocess.Popen(["sleep", "600"], env={**env, "EMOJISTREAM_PID_FILE": str(pid_file)},
                            start_new_session=True)
    try:
        stopped = run_script("stop_all.sh", env=env, timeout=120, check=False)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert (f"processes started by spark_aggregator (pids {left.pid}) still run; killing them"
                in stopped.stdout), stopped.stdout
        assert left.wait(timeout=10) == -signal.SIGKILL
    finally:
        if left.poll() is None:
            left.kill()
        left.wait()
