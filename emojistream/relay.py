"""Forward window updates from one Kafka topic to others: the publishers' common loop.

At-least-once: offsets are committed only after every target topic has acknowledged the records
(acks=all), so a publisher that crashes resumes where it stopped and loses nothing; a record may
be forwarded twice, which viewers treat as the same update again. Records that are not window
updates are skipped, counted and logged, and never block the stream.
"""

from __future__ import annotations

import logging
import threading

from kafka.errors import MessageSizeTooLargeError

from . import kafka_clients
from .config import Settings
from .events import InvalidEvent, decode_window_update

POLL_TIMEOUT_MS = 200


def relay(settings: Settings, source: str, targets: list[str], group_id: str,
          log: logging.Logger, stop: threading.Event) -> None:
    """Forward every window update of ``source`` to each of ``targets`` until ``stop`` is set."""
    consumer = kafka_clients.consumer(settings, group_id=group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest")
    producer = kafka_clients.producer(settings, acks="all", linger_ms=5)
    stats = {"forwarded": 0, "skipped": 0}
    try:
        kafka_clients.require_topics(settings, [source, *targets], consumer)
        consumer.subscribe([source], listener=kafka_clients.ReadyLog(
            log, source, group_id, "forwarding to " + ", ".join(targets)))
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            if not polled:
                continue
            for records in polled.values():
                for record in records:
                    _forward(producer, record, targets, stats, log)
            producer.flush()
            consumer.commit()
    finally:
        log.info("stopping: %(forwarded)d update(s) forwarded, %(skipped)d record(s) skipped",
                 stats)
        producer.flush()
        producer.close()
        consumer.close()


def _forward(producer, record, targets: list[str], stats: dict, log: logging.Logger) -> None:
    """Send ``record`` to every target when it is a window update; else count and log it."""
    try:
        decode_window_update(record.value)
        for target in targets:
            producer.send(target, key=record.key, value=record.value)
    except (InvalidEvent, MessageSizeTooLargeError) as err:
        stats["skipped"] += 1
        log.warning("skipping record at %s[%d]@%d: %s (%d skipped so far)", record.topic,
                    record.partition, record.offset, err, stats["skipped"])
        return
    stats["forwarded"] += 1
