"""Stale pid files: every pid file scripts/start_all.sh uses names an unrelated running process
(as after a crash or a reboot, when the pid is reused), some in the old format (a bare pid), some
with another process's start. start_all.sh must remove them, say so, and start every component;
scripts/stop_all.sh must stop every component and signal neither that process nor its group.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emojistream import config, topology
from tests.services import (
    get_json,
    isolated_env,
    pid_in_file,
    process_start,
    run_script,
    still_sleeping,
)

pytestmark = pytest.mark.stack


def component_names(settings: config.Settings) -> list[str]:
    """Every component start_all.sh starts, by the name of its pid file."""
    names = ["spark_aggregator", "registration_api", "main_publisher", "emoji_api"]
    for n in settings.clusters:
        names += [f"ws_server_{n}", f"cluster_publisher_{n}"]
        names += [f"subscriber_{n}_{k}" for k in range(1, settings.subscribers_per_cluster + 1)]
    return names


def health_urls(settings: config.Settings) -> list[str]:
    return ([f"http://{settings.api_host}:{settings.api_port}/health",
             f"http://{settings.registration_host}:{settings.registration_port}/health"]
            + [f"http://{settings.ws_host}:{topology.ws_port(settings, n)}/health"
               for n in settings.clusters])


def runs(pid: int) -> bool:
    """A process with this pid runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def marked(var_dir: Path) -> list[int]:
    """Running processes that start_all.sh started for this VAR_DIR (their environment has
    start_all.sh's mark, a pid file under it)."""
    prefix = f"EMOJISTREAM_PID_FILE={var_dir}/".encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if any(item.startswith(prefix) for item in environ.split(b"\0")):
            found.append(int(entry))
    return found


def write_stale(pid_files: list[Path], pid: int) -> None:
    """Each file names PID: every other one as a bare pid, the rest with another process's
    start."""
    other_start = process_start(os.getpid())
    for i, pid_file in enumerate(pid_files):
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{pid}\n" if i % 2 else f"{pid} {other_start}\n")


def stale_message(pid_file: Path, pid: int) -> str:
    return f"removing stale pid file {pid_file} (pid {pid} is another process now)"


def test_stale_pid_files_start_everything_and_signal_no_other_process(tmp_path,
                                                                       unrelated_process):
    env = isolated_env(tmp_path / "var", cluster_count=1)
    env.update(READY_TIMEOUT="400", KAFKA_START_TIMEOUT="240")
    settings = config.load(env)
    var, pid = Path(env["VAR_DIR"]), unrelated_process.pid
    names = component_names(settings)
    pid_files = [var / "run" / f"{name}.pid" for name in names] + [var / "kafka" / "kafka.pid"]
    write_stale(pid_files, pid)
    stopped = None
    try:
        started = run_script("start_all.sh", env=env, timeout=600, check=False)
        output = started.stdout + started.stderr
        assert started.returncode == 0, output
        for pid_file in pid_files:
            assert stale_message(pid_file, pid) in output, output
        for name in names:
            assert f"{name} is ready" in started.stdout, output
        for url in health_urls(settings):
            assert get_json(url)[0] == 200, url
        components = {pid_file: pid_in_file(pid_file) for pid_file in pid_files}
        assert all(runs(p) and p != pid for p in components.values()), components
        marks = marked(var)
        assert {p for f, p in components.items() if f.parent.name == "run"} <= set(marks)
        assert "java" in {command(p) for p in marks}  # the aggregator's Spark JVM
        assert still_sleeping(unrelated_process)

        # Stale files of components start_all.sh did not start (run.sh's client simulators).
        simulators = [var / "run" / f"client_simulator_{i}.pid" for i in (2, 3)]
        write_stale(simulators, pid)
        stopped = run_script("stop_all.sh", env=env, timeout=300, check=False)
        output = stopped.stdout + stopped.stderr
        assert stopped.returncode == 0, output
        for pid_file in simulators:
            assert stale_message(pid_file, pid) in output, output
        assert still_sleeping(unrelated_process)
        assert [p for p in components.values() if runs(p)] == []
        assert marked(var) == []
        assert not [p for p in pid_files + simulators if p.exists()]
        for url in health_urls(settings):
            with pytest.raises(OSError):
                get_json(url)
    finally:
        if stopped is None:
            run_script("stop_all.sh", env=env, timeout=300, check=False)
