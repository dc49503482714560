"""One read of an hour of a stream's windows from Kafka (GET /streams/ID/windows's reader,
emojistream/registration/history.py), with --streams streams in aggregated-emoji-topic.

It starts a Kafka broker of its own (a temporary VAR_DIR, free ports, the pipeline's topics),
writes for each stream an hour of 2-second windows (1,800), each window in --versions versions
(the running updates Spark writes while a window fills, the last one its final count), keyed
STREAM/WINDOW_START and stamped with the time the aggregator would have written them, as the
aggregator writes them (records of all streams interleaved, as they are written in one hour; no
compaction has run yet: the worst case, the last hour). Then, --trials times, it reads the hour
of one stream: the first read on a new consumer (a registration process's first request), the
others on the consumer kept between reads. It reports per count of streams the records written,
the records a read goes through, the windows answered, and the read's wall time (median, min,
max). The broker is stopped at the end.

    .venv/bin/python -m bench.history [--streams 1,10,50] [--versions 3] [--trials 5]
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

from kafka import TopicPartition

from bench import harness
from emojistream.common import kafka_clients
from emojistream.common.events import format_timestamp
from emojistream.common.settings import load_from
from emojistream.registration.history import HistoryReader
from emojistream.registration.settings import RegistrationSettings

HOUR_S = 3600
EMOJIS = ("🔥", "😂", "👏", "🎉", "🏏", "😮")


def update(stream_id: str, start: datetime, window_s: int, scale: int) -> bytes:
    aggregates = [{"emoji_type": e, "count": scale * (i + 1), "normalized_count": 0,
                   "unique_users": scale} for i, e in enumerate(EMOJIS)]
    return json.dumps({"stream_id": stream_id, "window_start": format_timestamp(start),
                       "window_end": format_timestamp(start + timedelta(seconds=window_s)),
                       "aggregates": aggregates}, ensure_ascii=False).encode()


def write_hour(settings, topic: str, streams: list[str], versions: int,
               hour_start: datetime) -> int:
    """An hour of windows of every stream, each in ``versions`` versions; the records written."""
    producer = kafka_clients.producer(settings, linger_ms=50, batch_size=256 * 1024,
                                      compression_type="lz4")
    window_s = settings.window_seconds
    written = 0
    try:
        for w in range(HOUR_S // window_s):
            start = hour_start + timedelta(seconds=w * window_s)
            for v in range(versions):
                written_at = start + timedelta(seconds=window_s * (v + 1) / versions + 0.5)
                for stream_id in streams:
                    producer.send(topic, key=f"{stream_id}/{format_timestamp(start)}".encode(),
                                  value=update(stream_id, start, window_s, v + 1),
                                  timestamp_ms=int(written_at.timestamp() * 1000))
                    written += 1
        producer.flush()
    finally:
        producer.close()
    return written


def records_in_range(settings, topic: str, start: float, end: float) -> int:
    """How many records a read of [start, end) goes through (the offsets between its bounds)."""
    consumer = kafka_clients.consumer(settings, group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        first_ms = int((start - settings.moment_lookback_s - settings.window_seconds
                        - settings.max_event_future_s - settings.event_time_margin_s) * 1000)
        last_ms = int((end + settings.window_seconds + settings.history_late_s) * 1000)
        firsts = consumer.offsets_for_times({tp: first_ms for tp in partitions})
        lasts = consumer.offsets_for_times({tp: last_ms for tp in partitions})
        ends = consumer.end_offsets(partitions)
        total = 0
        for tp in partitions:
            stop = ends[tp] if lasts[tp] is None else lasts[tp].offset
            begin = stop if firsts[tp] is None else firsts[tp].offset
            total += max(0, stop - begin)
        return total
    finally:
        consumer.close()


def main(argv=None) -> None:
    parser = harness.parser("history", __doc__)
    parser.add_argument("--streams", default="1,10,50",
                        help="counts of streams in the topic, one step each (default 1,10,50)")
    parser.add_argument("--versions", type=int, default=3,
                        help="versions of each window written (default 3)")
    parser.add_argument("--trials", type=int, default=5, help="reads per step (default 5)")
    args = parser.parse_args(argv)
    run = harness.Run("history", args)
    counts = [int(c) for c in args.streams.split(",")]
    steps = []
    with harness.isolated_kafka() as (env, _):
        for count in counts:
            topic = f"history-bench-{count}-{uuid.uuid4().hex[:6]}"
            settings = load_from(RegistrationSettings, env, aggregated_topic=topic,
                                 history_read_timeout_s=120.0)
            harness.run_script("create_topics.sh", env={**env, "AGGREGATED_TOPIC": topic})
            hour_start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
            streams = [f"bench-{i}" for i in range(count)]
            written = write_hour(settings, topic, streams, args.versions, hour_start)
            start = hour_start.timestamp()
            end = start + HOUR_S
            reader = HistoryReader(settings)
            seconds, windows = [], 0
            try:
                for _ in range(args.trials):
                    began = time.perf_counter()
                    windows = len(reader.windows(streams[0], start, end))
                    seconds.append(time.perf_counter() - began)
            finally:
                reader.close()
            scanned = records_in_range(settings, topic, start, end)
            steps.append({"streams": count, "versions": args.versions,
                          "records_written": written, "records_read": scanned,
                          "windows": windows, "first_read_s": seconds[0],
                          "median_s": statistics.median(seconds), "min_s": min(seconds),
                          "max_s": max(seconds), "reads_s": seconds})
    title = "History: one read of an hour of one stream's windows from Kafka"
    harness.print_table(title, ["streams", "records in the topic", "records read", "windows",
                                "first read (s)", "median (s)", "min (s)", "max (s)"],
                        [[s["streams"], s["records_written"], s["records_read"], s["windows"],
                          f"{s['first_read_s']:.3f}", f"{s['median_s']:.3f}",
                          f"{s['min_s']:.3f}", f"{s['max_s']:.3f}"] for s in steps])
    run.save(title, {"steps": steps},
             notes="One broker on this machine, uncompacted topic (the newest hour), one "
                   "partition; a read scans every stream's records of the hour and its margins.")


if __name__ == "__main__":
    main()
