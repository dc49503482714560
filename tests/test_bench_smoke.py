"""Each benchmark runs at a tiny size, so the harness keeps working (figures are not checked:
speed is measured by the benchmarks, not asserted by tests)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.services import REPO_ROOT

pytestmark = pytest.mark.stack

PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")


def run_bench(*args: str) -> str:
    result = subprocess.run([PYTHON, *args, "--no-report"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_broker_ceiling_runs():
    out = run_bench("bench/broker_ceiling.py", "--records", "20000")
    assert re.search(r"\| ProducerPerformance acks=all, lz4, \d+-byte JSON events \| 20000 \|", out)


def test_ingest_runs_and_counts_landed_events():
    out = run_bench("bench/ingest.py", "--seconds", "2", "--servers", "granian", "--no-before",
                    "--trials", "1", "--direct-events", "2000", "--ceiling-records", "20000")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "load" not in line]
    paths = ["single POST /emoji", "POST /emojis, 100 per request",
             "POST /emojis, 1,000 per request"]
    assert [row.split("|")[1].strip() for row in rows] == [
        *(f"granian: today's app: {path}" for path in paths),
        *(f"granian, one record per event: today's app: {path}" for path in paths),
        "kafka-python directly (no HTTP), 1 event(s) a record",
        "kafka-python directly (no HTTP), 500 event(s) a record"]
    landed = [float(row.split("|")[2].split()[0].replace(",", "")) for row in rows]
    assert all(rate > 0 for rate in landed), rows
    non_2xx = [row.split("|")[5].strip() for row in rows[:6]]
    assert non_2xx == ["0"] * 6, rows


def test_aggregation_runs():
    out = run_bench("bench/aggregation.py", "--rates", "2000", "--batches", "2")
    row = [line for line in out.splitlines() if line.startswith("| 2,000 |")]
    assert len(row) == 1 and row[0].split("|")[2].strip() == "1,000", out


def run_until_done(args: list[str], timeout_s: float) -> str:
    """Run a benchmark that starts the whole system; on timeout it gets SIGTERM, so that it
    stops the system it started (by pid) before it exits."""
    proc = subprocess.Popen([PYTHON, *args, "--no-report"], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=240)
        raise AssertionError(f"timed out after {timeout_s} s:\n{out}{err}") from None
    assert proc.returncode == 0, out + err
    return out


def table_rows(out: str, first_header: str) -> list[list[str]]:
    """The rows of the printed table whose first column header is ``first_header``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line, following in zip(lines[start + 2:], lines[start + 3:] + [""], strict=True):
        if not line.startswith("| ") or following.startswith("|---"):
            break  # the end of the table, or the next table's header
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_end_to_end_counts_every_window_exactly():
    out = run_until_done(["bench/end_to_end.py", "--rates", "200", "--seconds", "6",
                          "--warmup-seconds", "0", "--drain-seconds", "90"], timeout_s=400)
    [run] = table_rows(out, "run")
    label, target, achieved, accepted, refused, windows, exact = run[:7]
    p50, p95, p99, top, window_s = (number(c) for c in run[7:12])
    assert (label, target, refused, window_s) == ("200/s", "200", "0", 2), run
    assert number(accepted) == 1200 and number(achieved) > 150, run
    assert int(windows) >= 3 and exact == windows, run
    assert 0 < p50 <= p95 <= p99 <= top, run
    memory = {row[0]: row for row in table_rows(out, "component")}
    for component in ("kafka", "spark_aggregator (JVM)", "emoji_api", "ws_server_1"):
        assert number(memory[component][2]) > 0, memory
    assert number(memory["whole stack (peak of the sum)"][2]) > number(memory["kafka"][2])
