"""docs/benchmarks.md is generated from the run files in bench/results/ by
`.venv/bin/python -m bench.report`: a page that is not what the data generate fails here."""

from __future__ import annotations

import json
import re

from bench import report

BENCHMARKS = {"broker_ceiling", "ingest", "json_codec", "cors", "aggregation", "viewers_load",
              "end_to_end", "soak", "registrations", "fleet", "history"}
KEYS = {"schema", "benchmark", "title", "command", "started_at", "finished_at", "machine",
        "versions", "environment", "parameters", "results", "notes"}


def test_benchmarks_page_is_what_the_data_generate():
    assert report.main(["--check"]) == 0, (
        "docs/benchmarks.md is stale: run .venv/bin/python -m bench.report")


def test_check_fails_on_a_stale_page(tmp_path):
    stale = tmp_path / "benchmarks.md"
    stale.write_text(report.PAGE.read_text().replace("| yes |", "| no |", 1))
    assert report.main(["--check", "--page", str(stale)]) == 1


def test_every_run_file_names_its_benchmark_command_and_time():
    files = sorted(report.RESULTS_DIR.glob("*.json"))
    assert files
    for path in files:
        run = json.loads(path.read_text())
        assert KEYS <= run.keys(), (path.name, sorted(KEYS - run.keys()))
        assert run["benchmark"] in BENCHMARKS, path.name
        assert re.fullmatch(rf"{run['benchmark']}-\d{{8}}T\d{{4}}(\d{{2}})?Z(-\d+)?\.json",
                            path.name), path.name
        assert run["command"].startswith(".venv/bin/python "), path.name
        assert run["started_at"] or run["finished_at"], path.name
        assert run["started_at"] or run.get("source") == "converted from docs/benchmarks.md"
