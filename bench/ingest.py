"""Ingest: events per second that emoji_api.py accepts AND that land in Kafka.

Landed records are counted in the topic (end offsets before and after), not taken from the
replies. HTTP load comes from wrk (Debian's package; installed by this script when missing) with
keep-alive connections; its own CPU use is reported. Also measured: kafka-python producing
directly, with the API's producer settings, and each figure's ratio to the broker ceiling.

    .venv/bin/python bench/ingest.py [--seconds 20] [--connections 32] [--no-report]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import broker_ceiling
from bench.harness import isolated_kafka, report, topic_size
from emojistream import kafka_clients
from emojistream.events import encode, format_timestamp
from emojistream.ingest import KafkaEventSink
from testkit.processes import running, wait_for_health

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}"):read("*a")
"""


def ensure_wrk() -> str:
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                       stdout=subprocess.DEVNULL)
    return shutil.which("wrk")


def events(count: int) -> list[dict]:
    now = format_timestamp(datetime.now(UTC))
    return [{"user_id": f"viewer_{i}", "emoji_type": "🔥", "timestamp": now} for i in range(count)]


def wait_until_landed(settings, before: int, timeout_s: float = 30) -> int:
    """Records landed since ``before``, once the count stops growing."""
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = topic_size(settings, settings.emoji_events_topic) - before
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > 2:
            break
        time.sleep(0.5)
    return last


def http_run(settings, path: str, batch: int, seconds: int, connections: int, tmp: Path):
    body = tmp / f"body-{batch}.json"
    body.write_text(json.dumps(events(batch)[0] if path == "/emoji" else events(batch)))
    script = tmp / f"post-{batch}.lua"
    script.write_text(LUA.format(body=body))
    url = f"http://{settings.api_host}:{settings.api_port}{path}"
    before = topic_size(settings, settings.emoji_events_topic)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run([ensure_wrk(), "-t2", f"-c{connections}", f"-d{seconds}s", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    landed = wait_until_landed(settings, before)
    requests_per_s = float(out.split("Requests/sec:")[1].split()[0])
    non_2xx = int(out.split("Non-2xx or 3xx responses:")[1].split()[0]) \
        if "Non-2xx" in out else 0
    load_cpu = (cpu_after.ru_utime + cpu_after.ru_stime
                - cpu_before.ru_utime - cpu_before.ru_stime) / elapsed
    return landed / seconds, requests_per_s, non_2xx, load_cpu


def direct_run(settings, count: int):
    """kafka-python producing directly, with the ingest API's producer options."""
    sink = KafkaEventSink(settings)
    producer = kafka_clients.producer(settings, **sink.producer_options())
    records = [encode(e) for e in events(1000)]
    before = topic_size(settings, settings.emoji_events_topic)
    started = time.monotonic()
    for i in range(count):
        producer.send(settings.emoji_events_topic, records[i % 1000])
    producer.flush()
    elapsed = time.monotonic() - started
    producer.close()
    return wait_until_landed(settings, before) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--direct-records", type=int, default=500_000)
    parser.add_argument("--ceiling-records", type=int, default=1_000_000)
    parser.add_argument("--no-report", action="store_true",
                        help="print the table without appending it to docs/benchmarks.md")
    args = parser.parse_args()
    ceiling = broker_ceiling.ceiling(args.ceiling_records)
    rows = []
    with isolated_kafka() as (env, settings), tempfile.TemporaryDirectory() as tmp:
        with running(Path(env["VAR_DIR"]), "emoji_api", "emoji_api.py", env=env) as api:
            wait_for_health(f"http://{settings.api_host}:{settings.api_port}/health", api,
                            timeout_s=60)
            for label, path, batch in [("single POST /emoji", "/emoji", 1),
                                       ("POST /emojis, 100 per request", "/emojis", 100),
                                       ("POST /emojis, 1,000 per request", "/emojis", 1000)]:
                landed, rps, errors, cpu = http_run(settings, path, batch, args.seconds,
                                                    args.connections, Path(tmp))
                rows.append([label, f"{landed:,.0f}", f"{landed / ceiling:.2f}", f"{rps:,.0f}",
                             errors, f"{cpu:.2f}"])
        direct = direct_run(settings, args.direct_records)
        rows.append(["kafka-python directly (no HTTP)", f"{direct:,.0f}",
                     f"{direct / ceiling:.2f}", "", "", ""])
    report("Ingest", ["load", "events/s landed", "ratio to ceiling", "requests/s",
                      "non-2xx", "load generator CPU (cores)"], rows,
           notes=f"Broker ceiling (acks=all) measured in the same run: {ceiling:,.0f} records/s.",
           write=not args.no_report)


if __name__ == "__main__":
    main()
