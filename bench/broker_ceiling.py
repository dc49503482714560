"""Broker ceiling: how many event-sized records per second Kafka itself takes on this machine.

Runs Kafka's own ProducerPerformance tool (scripts/kafka-producer-perf-test.sh, from the installed
kafka-tools jars) against a broker of its own, writing records the size of our JSON events to a
topic shaped like emoji-events. Every ingest figure is also given as a ratio to this ceiling.

    .venv/bin/python -m bench.broker_ceiling [--records 2000000] [--results-dir bench/results]
"""

from __future__ import annotations

import random
import re
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench import harness
from bench.harness import REPO_ROOT, isolated_kafka
from emojistream import config
from emojistream.common.events import encode, format_timestamp

SUMMARY = re.compile(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), "
                     r"([\d.]+) ms avg latency, ([\d.]+) ms max latency, (\d+) ms 50th, "
                     r"(\d+) ms 95th, (\d+) ms 99th")


def write_payloads(path: Path, count: int = 10_000) -> int:
    """Event-shaped JSON payloads, one a line, for --payload-file; returns their mean size."""
    emojis = config.load({}).allowed_emojis
    now = datetime.now(UTC)
    lines = [encode({"user_id": f"viewer_{random.randrange(1_000_000)}",
                     "emoji_type": random.choice(emojis),
                     "timestamp": format_timestamp(now)}).decode() for _ in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return round(sum(len(line.encode()) for line in lines) / count)


def producer_performance(settings, records: int, payloads: Path, acks: str) -> dict:
    props = [f"bootstrap.servers={settings.kafka_bootstrap_servers}", f"acks={acks}",
             "linger.ms=20", "batch.size=262144", "compression.type=lz4"]
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "kafka-producer-perf-test.sh"),
         "--topic", settings.emoji_events_topic, "--num-records", str(records),
         "--payload-file", str(payloads), "--throughput", "-1", "--producer-props", *props],
        capture_output=True, text=True, check=True)
    match = SUMMARY.search(result.stdout.strip().splitlines()[-1])
    if not match:
        raise RuntimeError(f"unexpected ProducerPerformance output: {result.stdout[-500:]}")
    sent, rate, mb, avg, max_, p50, p95, p99 = match.groups()
    return {"records": int(sent), "rate": float(rate), "mb": float(mb), "p50": int(p50),
            "p99": int(p99)}


def measure(records: int) -> list[dict]:
    """ProducerPerformance with acks=1, then acks=all: one dict per run."""
    runs = []
    with isolated_kafka() as (env, settings), tempfile.TemporaryDirectory() as tmp:
        payloads = Path(tmp) / "events.jsonl"
        size = write_payloads(payloads)
        for acks in ("1", "all"):
            r = producer_performance(settings, records, payloads, acks)
            runs.append({"acks": acks, "compression": "lz4", "event_bytes": size,
                         "records": r["records"], "records_per_s": r["rate"],
                         "mb_per_s": r["mb"], "p50_ms": r["p50"], "p99_ms": r["p99"]})
    return runs


def ceiling(records: int = 1_000_000) -> float:
    """The broker ceiling in records/s (acks=all), for other benchmarks' ratios."""
    return measure(records)[-1]["records_per_s"]


HEADERS = ["run", "records", "records/s", "MB/s", "p50 ms", "p99 ms"]


def rows(runs: list[dict]) -> list[list]:
    return [[f"ProducerPerformance acks={r['acks']}, {r['compression']}, {r['event_bytes']}-byte "
             f"JSON events", r["records"], f"{r['records_per_s']:,.0f}", r["mb_per_s"],
             r["p50_ms"], r["p99_ms"]] for r in runs]


def main(argv=None) -> None:
    parser = harness.parser("broker_ceiling", __doc__)
    parser.add_argument("--records", type=int, default=2_000_000)
    args = parser.parse_args(argv)
    run = harness.Run("broker_ceiling", args)
    runs = measure(args.records)
    harness.print_table("Broker ceiling", HEADERS, rows(runs))
    run.save("Broker ceiling", {"runs": runs, "ceiling_records_per_s": runs[-1]["records_per_s"]},
             notes="Kafka's own ProducerPerformance against a broker of its own, records the "
                   "size of our JSON events, linger.ms 20, batch.size 262144; the ceiling is "
                   "the acks=all run.")


if __name__ == "__main__":
    main()
