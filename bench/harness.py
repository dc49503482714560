"""What every benchmark shares: an isolated system to measure, the printed table, and the run's
file under bench/results/ (one JSON file per run, which bench/report.py turns into
docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from emojistream import config
from emojistream.ops.components import components
from emojistream.ops.supervise import Supervisor
from testkit.processes import supervisor_runs
from testkit.sandbox import isolated_env

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
SCHEMA = 1
SECRET_WORDS = ("PASSWORD", "SECRET", "KEY")  # settings whose values a run file leaves out

# Distributions whose versions every run file records (those installed).
PACKAGES = ("pyspark", "kafka-python", "granian", "flask", "flask-cors", "orjson", "websockets",
            "requests", "lz4", "gunicorn", "pyuwsgi", "matplotlib")


def source_address(host: str | None, index: int) -> tuple[str, int] | None:
    """The local address the ``index``-th load connection binds to when the API is on this
    machine's loopback: 127.0.X.Y, one per connection, so that the ingest API's per-address
    event bucket (API_EVENTS_PER_S_PER_ADDRESS) sees several clients, as in a real audience
    (docs/operations.md#load-from-several-addresses). None (the system's choice) for another
    host."""
    if host not in ("localhost", "127.0.0.1"):
        return None
    return f"127.0.{index // 250}.{2 + index % 250}", 0


def parser(module: str, doc: str, **kwargs) -> argparse.ArgumentParser:
    """An argument parser for ``python -m bench.MODULE``, with --results-dir."""
    parser = argparse.ArgumentParser(prog=f".venv/bin/python -m bench.{module}",
                                     description=doc.split("\n\n")[0], **kwargs)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where the run's JSON file goes (default: bench/results)")
    return parser


# --- the run's file ------------------------------------------------------------------------------

def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cores": os.cpu_count(), "memory_gib": round(mem_kb / 1024 / 1024, 1), "cpu": model,
            "kernel": platform.release()}


def load_average() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"1m": round(one, 2), "5m": round(five, 2), "15m": round(fifteen, 2)}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def versions() -> dict:
    jars = sorted(p.name for p in (REPO_ROOT / "lib" / "kafka").glob("kafka_2.13-*.jar"))
    status = _git("status", "--porcelain", "--untracked-files=no")
    found = {"git_commit": _git("rev-parse", "HEAD"),
             "git_dirty": None if status is None else bool(status),
             "python": platform.python_version(),
             "kafka": jars[0].removeprefix("kafka_2.13-").removesuffix(".jar") if jars else None,
             "java": _java_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _java_version() -> str | None:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (done.stderr or done.stdout).splitlines()
    return first[0].strip() if first else None


def command_line() -> str:
    """The command as typed, the interpreter as the repository's (``sys.orig_argv``)."""
    interpreter, *rest = sys.orig_argv
    try:
        interpreter = str(Path(os.path.abspath(interpreter)).relative_to(REPO_ROOT))
    except ValueError:
        pass
    if interpreter.startswith(".venv/bin/python"):
        interpreter = ".venv/bin/python"
    return " ".join(shlex.quote(a) for a in [interpreter, *rest])


def environment() -> dict:
    """Settings given through the environment (their names upper case); secrets as "(set)"."""
    names = {f.name.upper() for f in dataclasses.fields(config.Settings)}
    return {name: "(set)" if any(word in name for word in SECRET_WORDS) else value
            for name, value in sorted(os.environ.items()) if name in names}


def finite(value):
    """``value`` with every NaN or infinity replaced by None (JSON has neither), and floats
    kept to 6 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _plain(value):
    """``value`` as JSON can hold it: paths as text, dataclasses as dicts."""
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


class Run:
    """One run of a benchmark: created when it starts (the start time, the command, the load
    average), ``save``d at the end into ``results_dir``/BENCHMARK-YYYYMMDDTHHMMSSZ.json."""

    def __init__(self, benchmark: str, args: argparse.Namespace):
        self.benchmark = benchmark
        self.started = datetime.now(UTC)
        self.command = command_line()
        self.load_before = load_average()
        self.results_dir = Path(args.results_dir)
        self.parameters = {k: v for k, v in vars(args).items() if k != "results_dir"}

    def save(self, title: str, results: dict, notes: str = "") -> Path:
        record = {
            "schema": SCHEMA,
            "benchmark": self.benchmark,
            "title": title,
            "command": self.command,
            "started_at": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": {**machine(), "load_average_before": self.load_before,
                        "load_average_after": load_average()},
            "versions": versions(),
            "environment": environment(),
            "parameters": self.parameters,
            "results": finite(results),
            "notes": notes,
        }
        self.results_dir.mkdir(parents=True, exist_ok=True)
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        path = self.results_dir / f"{self.benchmark}-{stamp}.json"
        for n in range(2, 100):
            if not path.exists():
                break
            path = self.results_dir / f"{self.benchmark}-{stamp}-{n}.json"
        path.write_text(json.dumps(record, indent=1, ensure_ascii=False, default=_plain,
                                   allow_nan=False) + "\n")
        print(f"results written to {_shown(path)}")
        return path


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    print(f"\n{title}\n\n{table(headers, rows)}\n")


def run_script(script: str, *args: str, env: dict) -> None:
    subprocess.run([str(REPO_ROOT / "scripts" / script), *args], env=env, cwd=REPO_ROOT,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextmanager
def isolated_kafka(**overrides):
    """A Kafka broker of its own with the pipeline's topics; yields (env, settings)."""
    with tempfile.TemporaryDirectory(prefix="bench-") as var_dir:
        env = isolated_env(Path(var_dir))
        env["KAFKA_HEAP"] = "1g"
        env.update({k: str(v) for k, v in overrides.items()})
        run_script("kafka.sh", "start", env=env)
        try:
            run_script("create_topics.sh", env=env)
            yield env, config.load(env)
        finally:
            run_script("kafka.sh", "stop", env=env)


# --- the whole system, as scripts/start_all.sh starts it ---------------------------------------

# isolated_env sizes Kafka's heap and Spark's driver for tests; a benchmark of the whole system
# measures the configured sizes (the defaults, or the caller's environment).
TEST_SIZING = ("KAFKA_HEAP", "SPARK_DRIVER_MEMORY")


class SystemFailed(RuntimeError):
    """scripts/start_all.sh or scripts/stop_all.sh did not succeed; the message has its output."""


def system_script(script: str, env: dict, timeout_s: float) -> None:
    """Run scripts/SCRIPT; its warnings (lines saying a component had to be killed) are logged."""
    result = subprocess.run([str(REPO_ROOT / "scripts" / script)], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=timeout_s)
    output = (result.stdout + result.stderr).strip().splitlines()
    if result.returncode != 0:
        raise SystemFailed(f"scripts/{script} exited {result.returncode}:\n"
                           + "\n".join(output[-20:]))
    for line in output:
        if "killing" in line:
            logging.getLogger("harness").warning("%s", line)


@contextmanager
def whole_system(var_dir: Path | None = None, ready_timeout_s: int = 300, clusters: int = 3):
    """Every component, started by scripts/start_all.sh on free ports with a VAR_DIR of its
    own (as tests/test_pipeline.py does) and stopped by scripts/stop_all.sh (its supervisord);
    yields (env, settings); ``clusters`` WebSocket servers (CLUSTER_COUNT). ``var_dir``
    (created, and kept afterwards, with the components' logs) defaults to a temporary
    folder."""
    with _var_dir(var_dir) as var_dir:
        env = isolated_env(Path(var_dir), cluster_count=clusters)
        for name in TEST_SIZING:
            env.pop(name, None)
            if name in os.environ:
                env[name] = os.environ[name]
        env.setdefault("READY_TIMEOUT", str(ready_timeout_s))
        try:
            system_script("start_all.sh", env, timeout_s=ready_timeout_s + 120)
            yield env, config.load(env)
        finally:
            system_script("stop_all.sh", env, timeout_s=180)
            if supervisor_runs(env):
                raise SystemFailed("supervisord still runs after scripts/stop_all.sh")


def variants(text: str) -> list[tuple[str, dict[str, str]]]:
    """--variants 'NAME:SETTING=VALUE,SETTING=VALUE;NAME:...' as [(name, {setting: value})];
    an empty list of settings is the defaults."""
    out = []
    for item in text.split(";"):
        name, _, settings = item.strip().partition(":")
        overrides = dict(s.split("=", 1) for s in settings.split(",") if s.strip())
        out.append((name, {k.strip(): v.strip() for k, v in overrides.items()}))
    return out


@contextmanager
def overridden_environment(overrides: dict[str, str]):
    """os.environ with ``overrides`` (which whole_system passes on to the system it starts),
    restored afterwards."""
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _var_dir(path: Path | None):
    if path is None:
        with tempfile.TemporaryDirectory(prefix="bench-system-") as temporary:
            yield Path(temporary)
    else:
        path.mkdir(parents=True, exist_ok=True)
        yield path


def system_pids(settings):
    """A function giving component name -> pid of every component running under the system's
    supervisord (Kafka's brokers included)."""
    supervisor = Supervisor(settings, components(settings))

    def pids() -> dict[str, int]:
        return {name: process["pid"] for name, process in supervisor.info().items()
                if process["pid"] and name != "crashes"}
    return pids


# --- resident memory of process trees ----------------------------------------------------------

def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name) of every process."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        table[int(stat.parent.name)] = (int(text[text.rindex(")") + 2:].split()[1]), comm)
    return table


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_ticks(pid: int) -> int:
    """User plus system CPU time of ``pid`` so far, in clock ticks (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def _machine_busy_ticks() -> int:
    """The machine's CPU ticks so far, all cores, not idle or waiting for I/O."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def _tree(root: int, table: dict[int, tuple[int, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _comm) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            tree.append(pid)
            todo += children.get(pid, [])
    return tree


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _forking_jvm(pid: int, table: dict[int, tuple[int, str]]) -> bool:
    """Whether ``pid`` is a JVM's child between fork and exec (Hadoop runs chmod and readlink
    for Spark's checkpoint files): it shares the JVM's memory, so its VmRSS is the JVM's."""
    parent = table[pid][0]
    return parent in table and table[parent][1] == "java" and _exe(pid) == _exe(parent)


WHOLE_MACHINE = "the whole machine"  # RssSampler.cpu_cores: every process, ours or not


class RssSampler:
    """Samples VmRSS (/proc/PID/status) of each component's process tree every ``interval_s``.

    ``pids()`` gives component name -> pid, read at every sample. A Java process below
    a component that is not itself Java (the Spark driver below spark_aggregator.py) counts as a
    component of its own, "NAME (JVM)"; its children between fork and exec, which share its
    memory, are left out. Per phase (see ``phase``): each component's peak RSS and
    largest process count, and the peak of the simultaneous sum over all components (kB); and
    the CPU each component used while the phase lasted, in cores (``cpu_cores``).
    """

    def __init__(self, pids, interval_s: float = 0.5):
        self.pids, self.interval_s = pids, interval_s
        self.current: str | None = None
        self.peaks: dict[str, dict[str, int]] = {}
        self.processes: dict[str, dict[str, int]] = {}
        self.sum_peaks: dict[str, int] = {}
        # CPU: per phase, the ticks each component used and the seconds sampled, summed over
        # consecutive samples inside the phase
        self._used: dict[str, dict[str, int]] = {}
        self._sampled_s: dict[str, float] = {}
        self._previous: tuple[str | None, float, dict[tuple[str, int], int]] = (None, 0.0, {})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @contextmanager
    def phase(self, name: str):
        """Attribute the samples taken inside the block to phase ``name``."""
        self.current = name
        try:
            yield
        finally:
            self.current = None

    def sample(self) -> dict[str, tuple[int, int]]:
        """Component -> (RSS kB of its processes, number of processes), now."""
        return {label: (rss, len(pids)) for label, (rss, pids) in self._sample().items()}

    def _sample(self) -> dict[str, tuple[int, list[int]]]:
        """Component -> (RSS kB of its processes, their pids), now."""
        table = _proc_table()
        found: dict[str, tuple[int, list[int]]] = {}
        for name, root in self.pids().items():
            for pid in _tree(root, table):
                if _forking_jvm(pid, table):
                    continue
                java_below = table[pid][1] == "java" and table[root][1] != "java"
                label = f"{name} (JVM)" if java_below else name
                rss, pids = found.get(label, (0, []))
                found[label] = (rss + _rss_kb(pid), [*pids, pid])
        return found

    def cpu_cores(self, phase: str) -> dict[str, float]:
        """Component -> the cores it used on average during ``phase``."""
        seconds = self._sampled_s.get(phase, 0.0)
        hz = os.sysconf("SC_CLK_TCK")
        return {label: ticks / hz / seconds
                for label, ticks in self._used.get(phase, {}).items()} if seconds else {}

    def _count_cpu(self, phase: str, found: dict[str, tuple[int, list[int]]]) -> None:
        now = time.monotonic()
        ticks = {(label, pid): _cpu_ticks(pid) for label, (_, pids) in found.items()
                 for pid in pids}
        ticks[(WHOLE_MACHINE, 0)] = _machine_busy_ticks()
        previous_phase, previous_time, previous_ticks = self._previous
        if previous_phase == phase:
            self._sampled_s[phase] = self._sampled_s.get(phase, 0.0) + now - previous_time
            used = self._used.setdefault(phase, {})
            for (label, pid), value in ticks.items():
                if (label, pid) in previous_ticks:
                    used[label] = used.get(label, 0) + value - previous_ticks[(label, pid)]
        self._previous = (phase, now, ticks)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            phase = self.current
            if phase is None:
                self._previous = (None, 0.0, {})
                continue
            found = self._sample()
            peaks = self.peaks.setdefault(phase, {})
            counts = self.processes.setdefault(phase, {})
            for label, (rss, pids) in found.items():
                peaks[label] = max(peaks.get(label, 0), rss)
                counts[label] = max(counts.get(label, 0), len(pids))
            self._count_cpu(phase, found)
            total = sum(rss for rss, _ in found.values())
            self.sum_peaks[phase] = max(self.sum_peaks.get(phase, 0), total)
