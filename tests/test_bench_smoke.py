"""Each benchmark runs at a tiny size as `.venv/bin/python -m bench.NAME`, so the harness keeps
working, and writes its run's JSON file (into a temporary folder: a test run never adds files
to bench/results/). Figures are not checked: speed is measured by the benchmarks, not asserted
by tests."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from tests.services import REPO_ROOT

pytestmark = pytest.mark.stack

PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")
RESULTS = REPO_ROOT / "bench" / "results"
BENCHMARKS = ["broker_ceiling", "ingest", "json_codec", "cors", "aggregation", "viewers_load",
              "end_to_end", "soak", "registrations", "history"]
KEYS = {"schema", "benchmark", "title", "command", "started_at", "finished_at", "machine",
        "versions", "environment", "parameters", "results", "notes"}


@pytest.fixture(autouse=True)
def results_untouched():
    """No smoke run writes into bench/results/."""
    before = sorted(RESULTS.glob("*"))
    yield
    assert sorted(RESULTS.glob("*")) == before


def command(module: str, args: tuple[str, ...], results_dir: Path) -> list[str]:
    return [PYTHON, "-m", f"bench.{module}", *args, "--results-dir", str(results_dir)]


def run_bench(module: str, *args: str, results_dir: Path, timeout_s: float = 300,
              exit_code: int = 0) -> tuple[str, dict]:
    result = subprocess.run(command(module, args, results_dir), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == exit_code, result.stdout + result.stderr
    return result.stdout, the_record(results_dir, module, args)


def run_until_done(module: str, *args: str, results_dir: Path, timeout_s: float) -> tuple[str,
                                                                                          dict]:
    """Run a benchmark that starts the whole system; on timeout it gets SIGTERM, so that it
    stops the system it started (by pid) before it exits."""
    proc = subprocess.Popen(command(module, args, results_dir), cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=240)
        raise AssertionError(f"timed out after {timeout_s} s:\n{out}{err}") from None
    assert proc.returncode == 0, out + err
    return out, the_record(results_dir, module, args)


def the_record(results_dir: Path, benchmark: str, args: tuple[str, ...]) -> dict:
    """The one file the run wrote, checked for the keys every run file has."""
    files = list(results_dir.glob(f"{benchmark}-*.json"))
    assert len(files) == 1, files
    assert re.fullmatch(rf"{benchmark}-\d{{8}}T\d{{6}}Z\.json", files[0].name), files[0]
    record = json.loads(files[0].read_text())
    assert KEYS <= record.keys(), sorted(record)
    assert record["benchmark"] == benchmark
    assert record["command"].startswith(f".venv/bin/python -m bench.{benchmark} {' '.join(args)}")
    started = datetime.fromisoformat(record["started_at"])
    assert started <= datetime.fromisoformat(record["finished_at"])
    assert files[0].name == f"{benchmark}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    machine = record["machine"]
    assert machine["cores"] >= 1 and machine["memory_gib"] > 0, machine
    assert {"1m", "5m", "15m"} <= machine["load_average_before"].keys()
    assert {"1m", "5m", "15m"} <= machine["load_average_after"].keys()
    assert re.fullmatch(r"[0-9a-f]{40}", record["versions"]["git_commit"]), record["versions"]
    assert {"python", "kafka", "pyspark", "kafka-python"} <= record["versions"].keys()
    assert "results_dir" not in record["parameters"]
    return record


@pytest.mark.parametrize("module", [*BENCHMARKS, "report"])
def test_help(module):
    result = subprocess.run([PYTHON, "-m", f"bench.{module}", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: .venv/bin/python -m bench.{module}"), result.stdout


def test_broker_ceiling_runs(tmp_path):
    out, record = run_bench("broker_ceiling", "--records", "20000", results_dir=tmp_path)
    assert re.search(r"\| ProducerPerformance acks=all, lz4, \d+-byte JSON events \| 20000 \|", out)
    runs = record["results"]["runs"]
    assert [(r["acks"], r["records"]) for r in runs] == [("1", 20000), ("all", 20000)]
    assert record["results"]["ceiling_records_per_s"] == runs[1]["records_per_s"] > 0
    assert record["parameters"] == {"records": 20000}


def test_ingest_runs_and_counts_landed_events(tmp_path):
    out, record = run_bench("ingest", "--seconds", "2", "--servers", "granian", "--no-before",
                            "--trials", "1", "--direct-events", "2000", "--ceiling-records",
                            "20000", results_dir=tmp_path)
    assert "| granian: today's app: single POST /emoji |" in out
    paths = ["single POST /emoji", "POST /emojis, 100 per request",
             "POST /emojis, 1,000 per request"]
    http, direct = record["results"]["http"], record["results"]["direct"]
    assert [(r["config"], r["path"]) for r in http] == [
        *(("granian: today's app", path) for path in paths),
        *(("granian, one record per event: today's app", path) for path in paths)]
    assert [r["events_per_request"] for r in http] == [1, 100, 1000] * 2
    assert [r["events_per_record"] for r in direct] == [1, 500]
    assert all(r["landed_per_s"] > 0 for r in http + direct), record["results"]
    assert [r["non_2xx"] for r in http] == [0] * 6, http
    assert all(len(r["trials"]) == 1 for r in http)
    assert record["results"]["ceiling_records_per_s"] > 0


def test_json_codec_runs(tmp_path):
    _out, record = run_bench("json_codec", "--trials", "1", "--events", "10",
                             results_dir=tmp_path)
    steps = record["results"]["steps"]
    assert [s["step"] for s in steps] == [
        "parse, 1 event", "parse, 10 events", "encode, per event", "request path, POST /emoji",
        "request path, POST /emojis of 10", "validate, per event"]
    assert all(s["a"]["median_us"] > 0 and s["b"]["median_us"] > 0 for s in steps), steps


def test_cors_runs(tmp_path):
    _out, record = run_bench("cors", "--trials", "1", "--requests", "20", results_dir=tmp_path)
    steps = record["results"]["steps"]
    assert [(s["a"]["variant"], s["b"]["variant"]) for s in steps] == [
        ("flask-cors", "hand-written")] * 2
    assert all(s["a"]["median_us"] > 0 and s["b"]["median_us"] > 0 for s in steps), steps


def test_history_reads_every_window_of_the_hour(tmp_path):
    _out, record = run_bench("history", "--streams", "2", "--versions", "2", "--trials", "2",
                             results_dir=tmp_path)
    [step] = record["results"]["steps"]
    assert (step["streams"], step["records_written"], step["records_read"], step["windows"]) == (
        2, 2 * 2 * 1800, 2 * 2 * 1800, 1800)
    assert len(step["reads_s"]) == 2 and step["median_s"] > 0


def test_aggregation_runs(tmp_path):
    _out, record = run_bench("aggregation", "--rates", "2000", "--batches", "2",
                             results_dir=tmp_path)
    [rate] = record["results"]["rates"]
    assert (rate["rate_per_s"], rate["events_per_batch"]) == (2000, 1000), rate
    assert rate["events_skipped"] == 0 and rate["median_batch_ms"] > 0, rate


def test_viewers_load_reaches_every_viewer(tmp_path):
    _out, record = run_bench("viewers_load", "--viewers", "20", "--streams", "2",
                             "--processes", "2", "--updates", "3", "--interval", "1",
                             "--grace", "2", results_dir=tmp_path)
    [layout] = record["results"]["layouts"]
    assert (layout["streams"], layout["viewers"], layout["connected"]) == (2, 20, 20), layout
    assert layout["deliveries"] == layout["expected_deliveries"] == 60, layout
    assert (layout["duplicates"], layout["other_streams_updates"]) == (0, 0), layout
    assert 0 <= layout["p50_ms"] <= layout["p99_ms"] <= layout["max_ms"], layout


def test_registrations_answers_every_registration(tmp_path):
    _out, record = run_bench("registrations", "--workers", "1,2", "--count", "300",
                             "--warmup", "0", "--trials", "1", "--connections", "8",
                             "--addresses", "3", results_dir=tmp_path)
    steps = record["results"]["steps"]
    assert [(s["workers"], s["registrations"], s["answered_200"], s["other_statuses"],
             s["bad_bodies"]) for s in steps] == [(1, 300, 300, {}, 0), (2, 300, 300, {}, 0)]
    assert [s["workers"] for s in record["results"]["summary"]] == [1, 2]
    assert record["results"]["generator"]["source_addresses"] == [
        "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    # 300 registrations take a fraction of a second: CPU clocks' ticks make the shares coarse.
    assert all(s["generator_cpu_s"] >= 0 and s["server_cpu_s"] > 0 for s in steps), steps


def test_end_to_end_counts_every_window_exactly(tmp_path):
    _out, record = run_until_done("end_to_end", "--rates", "200", "--seconds", "6",
                                  "--warmup-seconds", "0", "--drain-seconds", "90",
                                  results_dir=tmp_path, timeout_s=400)
    [run] = record["results"]["runs"]
    assert (run["label"], run["target_per_s"], run["refused"], run["window_s"]) == (
        "200/s", 200, 0, 2), run
    assert run["accepted"] == 1200 and run["achieved_per_s"] > 150, run
    assert run["windows"] >= 3 and run["exact_windows"] == run["windows"], run
    assert 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"] <= run["max_ms"], run
    assert len(run["latency_percentiles_ms"]) == 101
    after = run["after_end_ms"]  # the last update of a window holds events of its last moments
    assert 0 < after["p50"] <= after["p95"] <= after["p99"] <= after["max"], after
    hops = run["hops_ms"]  # each relay writes a window's last update after it read it
    assert list(hops) == ["last accepted", "aggregated-emoji-topic", "cluster1-topic",
                          "cluster1-topic-subscribers", "viewers"], hops
    relayed = [hops[stage]["p50"] for stage in list(hops)[1:4]]
    assert 0 < relayed[0] <= relayed[1] <= relayed[2], hops
    assert hops["viewers"] == after, hops
    [phase] = record["results"]["memory"]
    memory = {c["component"]: c["peak_mib"] for c in phase["components"]}
    for component in ("kafka", "spark_aggregator (JVM)", "emoji_api", "ws_server_1"):
        assert memory[component] > 0, memory
    assert phase["rate_per_s"] == 200 and phase["whole_stack_mib"] > memory["kafka"], phase
    cpu = {c["component"]: c["cpu_cores"] for c in phase["components"]}
    assert cpu["spark_aggregator (JVM)"] > 0 and cpu["kafka"] > 0, cpu
    assert phase["machine_cpu_cores"] >= max(cpu.values()), (phase["machine_cpu_cores"], cpu)


def test_soak_loses_nothing(tmp_path):
    _out, record = run_until_done("soak", "--minutes", "0.3", "--rate", "20", "--viewers", "2",
                                  "--sample-interval", "2", results_dir=tmp_path,
                                  timeout_s=600)
    results = record["results"]
    assert results["nothing_lost"] and results["accepted"] == results["in_kafka"] > 0, results
    assert results["refused"] == 0 and results["pairs_not_exact"] == 0, results
    components = {c["component"] for c in results["memory"]}
    assert {"kafka", "emoji_api", "spark_aggregator (JVM)"} <= components, components
