"""What every benchmark shares: an isolated system to measure, the machine's description, and
the report appended to docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from emojistream import config  # noqa: E402
from emojistream.sandbox import isolated_env  # noqa: E402

REPORT = REPO_ROOT / "docs" / "benchmarks.md"
PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return f"{os.cpu_count()} cores, {mem_kb / 1024 / 1024:.1f} GiB, {model}"


def versions() -> str:
    import kafka
    import pyspark
    jars = sorted(p.name for p in (REPO_ROOT / "lib" / "kafka").glob("kafka_2.13-*.jar"))
    broker = jars[0].removeprefix("kafka_2.13-").removesuffix(".jar") if jars else "?"
    return (f"Python {platform.python_version()}, Kafka {broker}, Spark {pyspark.__version__}, "
            f"kafka-python {kafka.__version__}")


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(title: str, headers: list[str], rows: list[list], notes: str = "",
           write: bool = True) -> None:
    """Print the table and append it, with machine, versions, date and command, to the report."""
    body = table(headers, rows)
    print(body)
    if not write:
        return
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"\n### {title} ({stamp})\n\n`{command_line()}`\n\n"
               f"Machine: {machine()}. {versions()}.\n\n{body}\n")
    if notes:
        section += f"\n{notes}\n"
    with REPORT.open("a") as out:
        out.write(section)


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


@contextmanager
def process(args: list[str], env: dict, ready_url: str | None = None, timeout_s: float = 60):
    """A component started for the benchmark and stopped by its pid afterwards."""
    proc = subprocess.Popen([PYTHON, *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if ready_url:
            wait_http(ready_url, timeout_s)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(url: str, timeout_s: float) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout_s} s")
        time.sleep(0.3)


def topic_size(settings, topic: str) -> int:
    """Records in ``topic`` (the sum of its partitions' end offsets)."""
    from kafka import TopicPartition
    from emojistream import kafka_clients
    consumer = kafka_clients.consumer(settings)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()
