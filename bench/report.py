"""docs/benchmarks.md, generated from the run files in bench/results/: the latest figure for each
target of issues 11, 18 and 22 with the run it comes from (date and exact command), the other
benchmarks' latest figures, the plots, and the bottlenecks (kept by hand in
bench/bottlenecks.md).

    .venv/bin/python -m bench.report           write docs/benchmarks.md
    .venv/bin/python -m bench.report --check   exit 1 when docs/benchmarks.md is not what the
                                               data would generate

Standard library only, and the same page from the same files wherever it runs.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
PAGE = REPO_ROOT / "docs" / "benchmarks.md"
BOTTLENECKS = REPO_ROOT / "bench" / "bottlenecks.md"
COMMAND = ".venv/bin/python -m bench.report"
TODAYS_APP = "granian: today's app"  # the ingest configuration that ships
FLASK_FLOOR = "granian: a bare Flask route"  # bench/ingest.py --flask-floor

# docs/NAME.png -> what it shows, in the order of the page.
PLOTS = {
    "ingest.png": "Ingest: events/s landed, median and range of the trials",
    "json_codec.png": "JSON and validation, µs of CPU per event",
    "aggregation.png": "Aggregation: events/s processed while busy against the offered rate",
    "viewers_streams.png": "Viewers: delay from hand-over to receipt, per layout",
    "registrations.png": "Registrations/s against registration worker processes",
    "end_to_end_latency.png": "End to end: latency CDF of each run",
    "end_to_end_rates.png": "End to end: p50/p95/p99 against the accepted rate",
}


# --- the runs ----------------------------------------------------------------------------------

def load(results_dir: Path) -> list[dict]:
    """Every run file, newest first (by its start, or its end where only that is known)."""
    runs = []
    for path in sorted(results_dir.glob("*.json")):
        run = json.loads(path.read_text())
        run["_file"] = path.name
        runs.append(run)
    return sorted(runs, key=when, reverse=True)


def when(run: dict) -> datetime:
    return datetime.fromisoformat(run["started_at"] or run["finished_at"])


def date(run: dict) -> str:
    return when(run).strftime("%Y-%m-%d %H:%M UTC")


def latest(runs: list[dict], benchmark: str, pick: Callable[[dict], object]):
    """(figure, run): the newest run of ``benchmark`` for which ``pick(results)`` finds one."""
    for run in runs:
        if run["benchmark"] == benchmark:
            found = pick(run["results"])
            if found is not None:
                return found, run
    return None, None


def n(value: float) -> str:
    return f"{value:,.0f}"


# --- what each target reads --------------------------------------------------------------------

def ingest_row(per_request: int) -> Callable[[dict], dict | None]:
    def pick(results: dict) -> dict | None:
        return next((r for r in results["http"] if r["config"] == TODAYS_APP
                     and r["events_per_request"] == per_request), None)
    return pick


def best_batched(results: dict) -> dict | None:
    rows = [r for r in results["http"] if r["config"] == TODAYS_APP
            and r["events_per_request"] > 1]
    return max(rows, key=lambda r: r["landed_per_s"]) if rows else None


def aggregation_at(rate: int) -> Callable[[dict], dict | None]:
    def pick(results: dict) -> dict | None:
        rows = sorted((r for r in candidate(results, "rates") if r["rate_per_s"] >= rate),
                      key=lambda r: r["rate_per_s"])
        return dict(rows[0], trigger_s=results["trigger_s"]) if rows else None
    return pick


def candidate(results: dict, key: str = "runs") -> list[dict]:
    """A file's runs (or memory phases, or aggregation rates) of its last variant: the one
    measured against the others (all of them when the file has no variants)."""
    last = list(results.get("variants") or {"": None})[-1]
    return [r for r in results[key] if r.get("variant", "") == last]


def e2e_at(rate: int) -> Callable[[dict], dict | None]:
    def pick(results: dict) -> dict | None:
        return next((r for r in candidate(results) if r["target_per_s"] == rate
                     and r["p95_ms"] is not None), None)
    return pick


def e2e_probe(results: dict) -> dict | None:
    if not results["probed"]:
        return None
    runs = candidate(results)
    best = next((r for r in runs if r["highest_sustainable"]), None)
    tried = [r["target_per_s"] for r in runs if "probe" in r["label"]]
    return {"best": best, "tried": tried}


def memory_at(rate: int) -> Callable[[dict], dict | None]:
    def pick(results: dict) -> dict | None:
        return next((m for m in candidate(results, "memory") if m["rate_per_s"] == rate
                     and m["whole_stack_mib"] is not None), None)
    return pick


@dataclass
class Figure:
    text: str
    met: bool | None      # None: not measured
    run: dict | None = None


def single_posts(runs, floor: float) -> Figure:
    row, run = latest(runs, "ingest", ingest_row(1))
    if row is None:
        return Figure("not measured", None)
    return Figure(f"{n(row['landed_per_s'])} events/s landed", row["landed_per_s"] >= floor, run)


def single_posts_to_floor(runs, share: float) -> Figure:
    """Single POSTs landed per second against the bare Flask route of the same run."""
    row, run = latest(runs, "ingest", ingest_row(1))
    if row is None:
        return Figure("not measured", None)
    floor = next((r for r in run["results"]["http"] if r["config"] == FLASK_FLOOR), None)
    if floor is None:
        return Figure(f"{n(row['landed_per_s'])} events/s landed; no bare Flask route in the run",
                      None, run)
    ratio = row["landed_per_s"] / floor["requests_per_s"]
    return Figure(f"{n(row['landed_per_s'])} events/s landed ({n(row['requests_per_s'])} "
                  f"requests/s) = {ratio:.2f} of the bare Flask route's "
                  f"{n(floor['requests_per_s'])} requests/s", ratio >= share, run)


def batched_1000(runs) -> Figure:
    row, run = latest(runs, "ingest", ingest_row(1000))
    if row is None:
        return Figure("not measured", None)
    ceiling = run["results"]["ceiling_records_per_s"]
    ratio = row["landed_per_s"] / ceiling
    return Figure(f"{n(row['landed_per_s'])} events/s = {ratio:.2f} of the ceiling measured in "
                  f"the run ({n(ceiling)} records/s)",
                  row["landed_per_s"] >= 150_000 or ratio >= 0.5, run)


def batched_best(runs) -> Figure:
    row, run = latest(runs, "ingest", best_batched)
    if row is None:
        return Figure("not measured", None)
    return Figure(f"{n(row['landed_per_s'])} events/s ({row['path'].split(', ')[1]}); windows "
                  f"not checked by this benchmark", row["landed_per_s"] >= 400_000, run)


def aggregation_100k(runs) -> Figure:
    row, run = latest(runs, "aggregation", aggregation_at(100_000))
    if row is None:
        return Figure("not measured", None)
    return Figure(f"at {n(row['rate_per_s'])}/s, trigger {row['trigger_s']:g} s: median batch "
                  f"{n(row['median_batch_ms'])} ms, p95 {n(row['p95_batch_ms'])} ms, "
                  f"{n(row['processed_per_s'])} events/s while busy",
                  row["keeps_up"], run)


def e2e_latency(runs, rate: int, p95_ms: float, p99_ms: float) -> Figure:
    row, run = latest(runs, "end_to_end", e2e_at(rate))
    if row is None:
        return Figure("not measured", None)
    exact = row["exact_windows"] == row["windows"]
    return Figure(f"p95 {n(row['p95_ms'])} ms, p99 {n(row['p99_ms'])} ms; "
                  f"{row['exact_windows']}/{row['windows']} windows exact",
                  exact and row["p95_ms"] <= p95_ms and row["p99_ms"] <= p99_ms, run)


def e2e_after_end(runs, p95_ms: float, rates=(10_000, 50_000)) -> Figure:
    """The final update's delay after the window's end, at the rates of the latency targets."""
    def pick(results: dict) -> list[dict] | None:
        measured = [r for r in candidate(results)
                    if r.get("after_end_ms") and r["target_per_s"] in rates]
        return sorted(measured, key=lambda r: r["target_per_s"]) or None
    rows, run = latest(runs, "end_to_end", pick)
    if rows is None:
        return Figure("not measured", None)
    return Figure("; ".join(
        f"at {n(row['target_per_s'])} events/s: p50 {n(row['after_end_ms']['p50'])} ms, "
        f"p95 {n(row['after_end_ms']['p95'])} ms, p99 {n(row['after_end_ms']['p99'])} ms"
        for row in rows), all(row["after_end_ms"]["p95"] <= p95_ms for row in rows), run)


def e2e_highest(runs, floor: int, p99_ms: float | None = None,
                seconds: float | None = None) -> Figure:
    found, run = latest(runs, "end_to_end", e2e_probe)
    if found is None:
        return Figure("not measured", None)
    best = found["best"]
    if best is None:
        tried = ", ".join(f"{n(rate)}/s" for rate in found["tried"])
        return Figure(f"no rate held (probes: {tried})", False, run)
    met = (best["target_per_s"] >= floor and best["exact_windows"] == best["windows"]
           and (p99_ms is None or best["p99_ms"] <= p99_ms)
           and (seconds is None or (best["seconds"] or 0) >= seconds))
    held = f" for {best['seconds']:g} s" if best["seconds"] else ""
    return Figure(f"{n(best['target_per_s'])} events/s held{held}, p99 {n(best['p99_ms'])} ms",
                  met, run)


def whole_stack(runs, rate: int, limit_mib: float) -> Figure:
    phase, run = latest(runs, "end_to_end", memory_at(rate))
    if phase is None:
        return Figure("not measured", None)
    return Figure(f"{n(phase['whole_stack_mib'])} MiB (peak of the sum)",
                  phase["whole_stack_mib"] <= limit_mib, run)


def closest_viewers(runs) -> Figure:
    def largest(results: dict) -> dict | None:
        return max(results["layouts"], default=None,
                   key=lambda layout: (layout["viewers"], layout["viewers_per_stream"] or 0))
    layout, run = latest(runs, "viewers_load", largest)
    if layout is None:
        return Figure("not measured", None)
    return Figure(f"not measured; closest: bench/viewers_load.py, {layout['layout']} "
                  f"({n(layout['viewers'])} viewers, updates handed to the servers, no "
                  f"pipeline): p99 {n(layout['p99_ms'])} ms from hand-over to receipt", None, run)


def fleet_row(viewers: int) -> Callable[[dict], dict | None]:
    """The run at ``viewers`` of the variant with the default settings (what ships)."""
    def pick(results: dict) -> dict | None:
        defaults = [name for name, settings in results["variants"].items()
                    if not {k: v for k, v in settings.items() if k != "VIEWERS"}]
        return next((r for r in results["runs"] if r["variant"] in defaults
                     and r["viewers"] == viewers and r["latency_ms"]["p99"] is not None), None)
    return pick


def fleet_viewers(runs, viewers: int, p99_ms: float) -> Figure:
    row, run = latest(runs, "fleet", fleet_row(viewers))
    if row is None:
        return closest_viewers(runs)
    return Figure(f"p99 {n(row['latency_ms']['p99'])} ms (p50 {n(row['latency_ms']['p50'])}), "
                  f"{row['delivered_fraction']:.2%} of viewer-windows got the final count, at "
                  f"{n(row['rate'])} reactions/s; the fleet used {row['fleet_cpu_share']:.2f} "
                  "of a core", row["latency_ms"]["p99"] <= p99_ms
                  and row["delivered_fraction"] == 1.0, run)


def join_storm(runs) -> Figure:
    row, run = latest(runs, "fleet", lambda res: next(
        (r for r in res["runs"] if r.get("storm_viewers")), None))
    if row is None:
        return Figure(NOT_MEASURED, None)
    p99 = row["latency_ms"]["p99"]
    return Figure(f"{n(row['storm_joins_per_s'] or 0)} registrations (each then connected) a "
                  f"second, {n(row['storm_connected'])} of {n(row['storm_viewers'])} joined in "
                  f"{row['storm_join_seconds']:.1f} s, {row['storm_failures']} failed; the "
                  f"{n(row['viewers'])} watching: p99 {n(p99 or 0)} ms, "
                  f"{row['delivered_fraction'] or 0:.2%} of final counts",
                  (row["storm_joins_per_s"] or 0) >= 10_000 and p99 is not None
                  and p99 <= 1_000 and row["storm_failures"] == 0, run)


def fleet_text(results: dict) -> str:
    return "; ".join(
        f"{r['variant']}, {n(r['viewers'])} viewers: final p50 {n(r['latency_ms']['p50'] or 0)} "
        f"/ p99 {n(r['latency_ms']['p99'] or 0)} ms, {r['delivered_fraction'] or 0:.2%} "
        f"delivered, {n(r['messages_per_s'] or 0)} messages/s, fleet CPU "
        f"{r['fleet_cpu_share']:.2f}, servers' CPU {sum(r['server_cpu_share'].values()):.2f}"
        for r in results["runs"])


NOT_MEASURED = "not measured: no benchmark in bench/ measures it yet"


def registrations_per_process(runs) -> Figure:
    """bench/registrations.py: registrations/s for each worker count, and who used the CPU."""
    summary, run = latest(runs, "registrations", lambda res: res["summary"] or None)
    if summary is None or run is None:
        return Figure(NOT_MEASURED, None)
    trials = run["parameters"]["trials"]
    parts = "; ".join(f"{s['workers']} worker{'s' if s['workers'] > 1 else ''}: "
                      f"{n(s['median_per_s'])}/s ({n(s['min_per_s'])}–{n(s['max_per_s'])}), "
                      f"p99 {s['p99_ms']:.0f} ms, API {s['server_cpu_share']:.0%} of the "
                      f"CPU" for s in summary)
    generator = max(s["generator_cpu_share"] for s in summary)
    refused = sum(s["refused"] for s in summary)
    return Figure(f"{parts}. Median of {trials} trial(s) of "
                  f"{n(run['parameters']['count'])} registrations on {run['machine']['cores']} "
                  f"cores; the load generator took at most {generator:.0%} of the CPU; "
                  f"{n(refused)} not answered 200", None, run)


def probed_end_to_end(runs: list[dict]) -> list[dict]:
    """The newest end-to-end run that probed for the highest rate: issue 22's end-to-end
    targets are read from that one run (a shorter run of variants made after it measures
    levers, not the targets). Every run when none probed."""
    probed = [r for r in runs if r["benchmark"] == "end_to_end" and r["results"]["probed"]]
    return probed[:1] or runs


def targets(runs: list[dict]) -> list[tuple[str, list[tuple[str, Figure]]]]:
    probed = probed_end_to_end(runs)
    return [
        ("Issue 11", [
            ("single POSTs: 5,000 events/s landed (64 keep-alive connections)",
             single_posts(runs, 5_000)),
            ("batched POSTs of 1,000: 150,000 events/s landed, or 0.5 of the broker ceiling "
             "measured in the same run", batched_1000(runs)),
            ("aggregation: 100,000 events/s sustained", aggregation_100k(runs)),
            ("highest sustainable end-to-end rate, every window exact: 50,000 events/s",
             e2e_highest(runs, 50_000)),
            ("end to end at 10,000 events/s: p95 ≤ 3 s, p99 ≤ 4 s",
             e2e_latency(runs, 10_000, 3_000, 4_000)),
            ("whole stack within 6 GB at 10,000 events/s", whole_stack(runs, 10_000, 6 * 1024)),
        ]),
        ("Issue 22", [
            ("end to end at 10,000 events/s: p95 ≤ 2.5 s, p99 ≤ 3 s",
             e2e_latency(probed, 10_000, 2_500, 3_000)),
            ("end to end at 50,000 events/s: p95 ≤ 2.5 s, p99 ≤ 3 s",
             e2e_latency(probed, 50_000, 2_500, 3_000)),
            ("from a window's end to the viewers' final update: p95 ≤ 0.5 s",
             e2e_after_end(probed, 500)),
            ("highest sustainable end-to-end rate, every window exact, p99 ≤ 4 s, held 60 s: "
             "250,000 events/s", e2e_highest(probed, 250_000, p99_ms=4_000, seconds=60)),
            ("single POSTs: 15,000 requests/s landed (0.75 of a bare Flask app in the same "
             "run)", single_posts_to_floor(runs, 0.75)),
            ("batched POSTs: 400,000 events/s landed, every window exact", batched_best(runs)),
            ("whole stack within 4 GB at 50,000 events/s",
             whole_stack(probed, 50_000, 4 * 1024)),
        ]),
        ("Issue 18", [
            ("50,000 viewers on the real pipeline, reactions flowing: every viewer gets every "
             "window's final count, p99 ≤ 1 s after the window ends",
             fleet_viewers(runs, 50_000, 1_000)),
            ("20,000 viewers on the real pipeline: every final count, p99 ≤ 1 s",
             fleet_viewers(runs, 20_000, 1_000)),
            ("join storm: 10,000 registrations/s while 20,000 watch, their p99 within 1 s",
             join_storm(runs)),
            ("registrations/s against registration processes", registrations_per_process(runs)),
        ]),
    ]


# --- figures without a target ------------------------------------------------------------------

def others(runs: list[dict]) -> list[tuple[str, str, dict]]:
    """(benchmark, latest figure, run) of what no target reads."""
    out = []
    ceilings = [(r["results"]["ceiling_records_per_s"], r) for r in runs
                if r["benchmark"] in ("broker_ceiling", "ingest")]
    if ceilings:
        value, run = ceilings[0]
        out.append(("broker ceiling", f"{n(value)} records/s (Kafka's ProducerPerformance, "
                    f"acks=all, one event a record)", run))
    direct, run = latest(runs, "ingest", lambda res: next(
        (r for r in res["direct"] if r["events_per_record"] == 500), None))
    if direct:
        out.append(("kafka-python alone", f"{n(direct['landed_per_s'])} events/s at 500 events "
                    f"a record", run))
    step, run = latest(runs, "json_codec", lambda res: next(
        (s for s in res["steps"] if s["step"] == "request path, POST /emoji"), None))
    if step:
        out.append(("JSON codec", f"a single POST's request path: {step['b']['median_us']:.2f} "
                    f"µs of CPU per event with {step['b']['variant']}, "
                    f"{step['a']['median_us']:.2f} with {step['a']['variant']}", run))
    steps, run = latest(runs, "cors", lambda res: res["steps"])
    if steps:
        parts = [f"{s['step']}: {s['a']['median_us']:.1f} µs with {s['a']['variant']}, "
                 f"{s['b']['median_us']:.1f} with {s['b']['variant']} ({s['ratio']:.2f}x)"
                 for s in steps]
        out.append(("ingest CORS", "; ".join(parts), run))
    steps, run = latest(runs, "history", lambda res: res["steps"] or None)
    if steps:
        parts = [f"{s['streams']} stream(s), {n(s['records_read'])} records read: "
                 f"{s['median_s']:.2f} s (first read {s['first_read_s']:.2f} s)" for s in steps]
        out.append(("history: one read of an hour of one stream's windows", "; ".join(parts),
                    run))
    layouts, run = latest(runs, "viewers_load", lambda res: res["layouts"] or None)
    if layouts:
        parts = [f"{x['layout']}: {n(x['deliveries'])}/{n(x['expected_deliveries'])} "
                 f"delivered, p99 {n(x['p99_ms'])} ms" for x in layouts]
        out.append(("viewers (hand-over to receipt)", "; ".join(parts), run))
    seen: set[str] = set()
    for run in runs:  # the newest run of each set of variants, side by side
        if run["benchmark"] != "fleet" or not run["results"]["runs"]:
            continue
        variants = json.dumps(run["results"]["variants"], sort_keys=True)
        if variants not in seen:
            seen.add(variants)
            out.append(("viewers on the real pipeline (window end to final update)",
                        fleet_text(run["results"]), run))
    soak, run = latest(runs, "soak", lambda res: res)
    if soak:
        growth = {c["component"]: c["second_half_growth_mib"] for c in soak["memory"]}
        jvm = next((c for c in soak["memory"] if c["component"].endswith("(JVM)")), None)
        python = [v for k, v in growth.items() if not k.startswith("kafka") and "(JVM)" not in k
                  and k != "spark_aggregator"]
        lost = "nothing lost" if soak["nothing_lost"] else "events or counts LOST"
        text = (f"{soak['minutes']:g} minutes at {soak['rate_per_s']} events/s, {lost}; growth "
                f"over the second half: "
                f"Python components at most {max(python):+.0f} MiB, Kafka "
                f"{growth.get('kafka', 0):+.0f} MiB")
        if jvm:
            text += (f", Spark's driver JVM {jvm['second_half_growth_mib']:+.0f} MiB "
                     f"({n(jvm['start_mib'])} to {n(jvm['end_mib'])} MiB)")
        out.append(("soak", text, run))
    return out


# --- the page ----------------------------------------------------------------------------------

def plot_run(runs: list[dict], png: str) -> dict | None:
    """The newest run that wrote docs/``png`` (its --plot or --plot-rates)."""
    for run in runs:
        for option in ("plot", "plot_rates"):
            value = run["parameters"].get(option)
            if isinstance(value, str) and Path(value).name == png and \
                    Path(value).parent.name == "docs":
                return run
    return None


def run_line(run: dict) -> str:
    machine = run["machine"]
    before, after = machine.get("load_average_before"), machine.get("load_average_after")
    load = (f", load average {before['1m']:.1f} to {after['1m']:.1f}" if before and after
            else "")
    converted = "*" if run.get("source") else ""
    return (f"- {date(run)}{converted}, `{run['_file']}`: {machine['cores']} cores, "
            f"{machine['cpu']}{load}  \n  `{run['command']}`")


def page(runs: list[dict], bottlenecks: str) -> str:
    cited: list[dict] = []

    def ref(run: dict | None) -> str:
        if run is None:
            return ""
        if run not in cited:
            cited.append(run)
        return f"{run['benchmark']}, {date(run)}"

    lines = [
        "# Benchmarks",
        "",
        f"<!-- Generated by `{COMMAND}` from bench/results/ and bench/bottlenecks.md: edit "
        "those, not this page. -->",
        "",
        f"Generated by `{COMMAND}` from the run files in `bench/results/`; `{COMMAND} "
        "--check` (in the fast tests) fails when this page is stale. Every benchmark runs "
        "from the repository root as `.venv/bin/python -m bench.NAME` (`--help` for its "
        "options) and writes one JSON file per run there: its command, UTC start, machine, "
        "versions, parameters and results. The machine is a shared 2-core VM whose speed "
        "changes from hour to hour, so compare figures within a run. A run's load average "
        "shows whether other work shared the machine.",
        "",
        "## Latest figures against the targets",
        "",
        "| target | latest figure | met | run |",
        "|---|---|---|---|",
    ]
    for issue, rows in targets(runs):
        lines.append(f"| **{issue}** | | | |")
        for target, figure in rows:
            met = {True: "yes", False: "no", None: "–"}[figure.met]
            lines.append(f"| {target} | {figure.text} | {met} | {ref(figure.run)} |")
    lines += ["", "## Other latest figures", "", "| benchmark | latest figure | run |",
              "|---|---|---|"]
    for name, text, run in others(runs):
        lines.append(f"| {name} | {text} | {ref(run)} |")
    lines += ["", "## Plots", ""]
    for png, title in PLOTS.items():
        run = plot_run(runs, png)
        if run is None or not (REPO_ROOT / "docs" / png).exists():
            continue
        lines += [f"![{title}]({png})", "", f"*From the run {ref(run)}.*", ""]
    lines += ["## Runs cited", "",
              "Newest first; the load average is the 1-minute one, before and after. Runs "
              "marked * were converted from this page's earlier tables: their time is the "
              "run's end, and their commands have that day's form (`bench/NAME.py`).", ""]
    lines += [run_line(run) for run in sorted(cited, key=when, reverse=True)]
    lines += ["", "## Bottlenecks", "", bottlenecks.strip(), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the page is not what the data would generate")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--page", type=Path, default=PAGE,
                        help="the page to write or check (default: docs/benchmarks.md)")
    args = parser.parse_args(argv)
    text = page(load(args.results_dir), BOTTLENECKS.read_text())
    if args.check:
        current = args.page.read_text() if args.page.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.page),
                                    "generated", lineterm="", n=1)
        print("\n".join(list(diff)[:40]))
        print(f"{args.page} is not what the data would generate: run {COMMAND}",
              file=sys.stderr)
        return 1
    args.page.write_text(text)
    print(f"wrote {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
