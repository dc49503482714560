"""JSON on the ingest API's hot path: the standard library's json against orjson, and the event
validation before and after it was made faster, in µs of CPU per event, in one process.

The request path is what emoji_api.py does with a request body, without HTTP and Kafka: parse
the body, validate every event (emojistream.common.events.EventValidator, today's), encode every
event for its record (the API encodes each event once, then joins them into arrays). "stdlib"
is json.loads (strict: no NaN) and json.dumps(ensure_ascii=False, compact); "orjson" is
orjson.loads and orjson.dumps, as the API does now. The validation rows compare the validator of
commit dd833b1 (before issue 11: scans every character of an id, reformats every timestamp) with
today's, on the same parsed events.

Trials alternate the variants (A B, then B A, ...), so that a machine whose speed changes meanwhile
slows both alike; each cell is the median of --trials trials, with the range of the trials.

    .venv/bin/python -m bench.json_codec [--trials 15] [--events 1000]
                                         [--plot docs/json_codec.png] [--results-dir bench/results]
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import time
import types
from datetime import UTC, datetime

import orjson

from bench import harness, plots
from bench.harness import REPO_ROOT
from emojistream import config
from emojistream.common.events import EventValidator, format_timestamp

log = logging.getLogger("json_codec")

BEFORE_COMMIT = "dd833b1"  # the last commit before issue 11's changes to the ingest path
BEFORE_EVENTS = "emojistream/events.py"  # where the validator was at that commit


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def stdlib_loads(data: bytes):
    return json.loads(data, parse_constant=_reject_constant)


def stdlib_dumps(message) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


CODECS = {"stdlib json": (stdlib_loads, stdlib_dumps), "orjson": (orjson.loads, orjson.dumps)}


def old_events_module() -> types.ModuleType:
    """The events module as of BEFORE_COMMIT (it imports the standard library only)."""
    source = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:{BEFORE_EVENTS}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("events_before")
    exec(compile(source, f"{BEFORE_COMMIT}:{BEFORE_EVENTS}", "exec"), module.__dict__)
    return module


def sample_events(count: int, now: datetime) -> list[dict]:
    stamp = format_timestamp(now)
    emojis = config.load().allowed_emojis
    return [{"user_id": f"viewer_{i}", "emoji_type": emojis[i % len(emojis)], "timestamp": stamp}
            for i in range(count)]


def request_path(loads, dumps, validator, body: bytes, received_at: datetime) -> int:
    """Parse, validate, encode each event; the number of events."""
    parsed = loads(body)
    items = parsed if isinstance(parsed, list) else [parsed]
    for item in items:
        dumps(validator.validate(item, received_at))
    return len(items)


def timed(step, events_per_call: int, min_s: float = 0.2) -> float:
    """µs of CPU per event of ``step()``, run for at least ``min_s`` of CPU."""
    calls, started = 0, time.process_time()
    while (elapsed := time.process_time() - started) < min_s:
        step()
        calls += 1
    return 1e6 * elapsed / (calls * events_per_call)


def cases(events: int) -> dict[str, dict[str, tuple]]:
    """row -> variant -> (step, events per call)."""
    now = datetime.now(UTC)
    current = EventValidator.from_settings(config.load())
    old = old_events_module().EventValidator.from_settings(config.load())
    single, batch = sample_events(1, now)[0], sample_events(events, now)
    single_body, batch_body = orjson.dumps(single), orjson.dumps(batch)
    rows: dict[str, dict[str, tuple]] = {}
    for name, (loads, dumps) in CODECS.items():
        rows.setdefault("parse, 1 event", {})[name] = (lambda f=loads: f(single_body), 1)
        rows.setdefault(f"parse, {events:,} events", {})[name] = (
            lambda f=loads: f(batch_body), events)
        rows.setdefault("encode, per event", {})[name] = (
            lambda f=dumps: [f(e) for e in batch], events)
        rows.setdefault("request path, POST /emoji", {})[name] = (
            lambda f=loads, g=dumps: request_path(f, g, current, single_body, now), 1)
        rows.setdefault(f"request path, POST /emojis of {events:,}", {})[name] = (
            lambda f=loads, g=dumps: request_path(f, g, current, batch_body, now), events)
    rows["validate, per event"] = {
        f"before ({BEFORE_COMMIT})": (lambda: [old.validate(e, now) for e in batch], events),
        "after (today)": (lambda: [current.validate(e, now) for e in batch], events)}
    return rows


def measure(rows: dict[str, dict[str, tuple]], trials: int) -> dict[str, dict[str, list]]:
    """row -> variant -> µs per event of each trial, the variants alternating in order."""
    results = {row: {v: [] for v in variants} for row, variants in rows.items()}
    for trial in range(trials):
        for row, variants in rows.items():
            order = list(variants) if trial % 2 == 0 else list(variants)[::-1]
            for variant in order:
                step, per_call = variants[variant]
                results[row][variant].append(timed(step, per_call))
    return results


def summary(results: dict[str, dict[str, list]]) -> list[dict]:
    """One dict per step: each variant's median, range and trials (µs per event), and the
    ratio of the medians."""
    out = []
    for step, variants in results.items():
        (first, a), (second, b) = variants.items()
        out.append({"step": step,
                    "a": {"variant": first, "median_us": statistics.median(a), "min_us": min(a),
                          "max_us": max(a), "trials_us": a},
                    "b": {"variant": second, "median_us": statistics.median(b), "min_us": min(b),
                          "max_us": max(b), "trials_us": b},
                    "ratio": statistics.median(a) / statistics.median(b)})
    return out


def cell(variant: dict) -> str:
    return (f"{variant['variant']}: {variant['median_us']:.2f} "
            f"({variant['min_us']:.2f}-{variant['max_us']:.2f})")


HEADERS = ["step", "A: median (range)", "B: median (range)", "A / B"]


def table_rows(steps: list[dict]) -> list[list]:
    return [[s["step"], cell(s["a"]), cell(s["b"]), f"{s['ratio']:.2f}x"] for s in steps]


def main(argv=None) -> None:
    parser = harness.parser("json_codec", __doc__)
    parser.add_argument("--trials", type=int, default=15, help="trials per cell (default 15)")
    parser.add_argument("--events", type=int, default=1000,
                        help="events in the batched body (default 1000)")
    parser.add_argument("--plot", default=None,
                        help="write a PNG of the medians and ranges here (e.g. "
                             "docs/json_codec.png)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: "
                                                   "%(message)s")
    run = harness.Run("json_codec", args)
    results = measure(cases(args.events), args.trials)
    steps = summary(results)
    title = "JSON codec and validation, µs of CPU per event"
    harness.print_table(title, HEADERS, table_rows(steps))
    notes = (f"Median of {args.trials} trials each (range in brackets), A and B alternating; "
             f"each trial runs its step for at least 0.2 s of CPU (time.process_time). Python "
             f"{sys.version.split()[0]}, orjson {orjson.__version__}. Request path: parse + "
             f"validate + encode each event, today's validator.")
    print(notes)
    run.save(title, {"steps": steps}, notes)
    if args.plot:
        trials = {f"{row}: {variant}": values for row, variants in results.items()
                  for variant, values in variants.items()}
        plots.bars(args.plot, trials, "JSON and validation on the ingest path (median, range)",
                   "µs of CPU per event", log_scale=True)


if __name__ == "__main__":
    main()
