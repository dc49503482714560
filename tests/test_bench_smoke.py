"""Each benchmark runs at a tiny size, so the harness keeps working (figures are not checked:
speed is measured by the benchmarks, not asserted by tests)."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO_ROOT

PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")


def run_bench(*args: str) -> str:
    result = subprocess.run([PYTHON, *args, "--no-report"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_broker_ceiling_runs():
    out = run_bench("bench/broker_ceiling.py", "--records", "20000")
    assert re.search(r"\| ProducerPerformance acks=all, lz4, \d+-byte JSON events \| 20000 \|", out)


def test_ingest_runs_and_counts_landed_records():
    out = run_bench("bench/ingest.py", "--seconds", "2", "--direct-records", "2000",
                    "--ceiling-records", "20000")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "load" not in line]
    assert [row.split("|")[1].strip() for row in rows] == [
        "single POST /emoji", "POST /emojis, 100 per request",
        "POST /emojis, 1,000 per request", "kafka-python directly (no HTTP)"]
    landed = [float(row.split("|")[2].strip().replace(",", "")) for row in rows]
    assert all(rate > 0 for rate in landed), rows


def test_aggregation_runs():
    out = run_bench("bench/aggregation.py", "--rates", "2000", "--batches", "2")
    row = [line for line in out.splitlines() if line.startswith("| 2,000 |")]
    assert len(row) == 1 and row[0].split("|")[2].strip() == "1,000", out
