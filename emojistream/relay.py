"""Forward window updates from one Kafka topic to others: the publishers' common loop.

At-least-once: offsets are committed only after every target topic has acknowledged the records
(acks=all), so a publisher that crashes resumes where it stopped and loses nothing; a record may
be forwarded twice, which viewers treat as the same update again. Records that are not window
updates are skipped, counted and logged, and never block the stream.
"""

from __future__ import annotations

import logging
import threading

from kafka import ConsumerRebalanceListener

from . import kafka_clients
from .config import Settings
from .events import InvalidEvent, decode_window_update

POLL_TIMEOUT_MS = 200


class _ReadyLog(ConsumerRebalanceListener):
    def __init__(self, log: logging.Logger, source: str, targets: list[str]):
        self.log, self.source, self.targets = log, source, targets

    def on_partitions_assigned(self, assigned):
        if not assigned:
            self.log.info("in the group with no partition of %s (another member has them)",
                          self.source)
            return
        partitions = sorted(tp.partition for tp in assigned)
        self.log.info("ready: forwarding %s partition(s) %s to %s",
                      self.source, partitions, ", ".join(self.targets))

    def on_partitions_revoked(self, revoked):
        if revoked:
            self.log.info("partitions %s of %s revoked",
                          sorted(tp.partition for tp in revoked), self.source)


def relay(settings: Settings, source: str, targets: list[str], group_id: str,
          log: logging.Logger, stop: threading.Event) -> None:
    """Forward every window update of ``source`` to each of ``targets`` until ``stop`` is set."""
    consumer = kafka_clients.consumer(settings, group_id=group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest")
    producer = kafka_clients.producer(settings, acks="all", linger_ms=5)
    forwarded = skipped = 0
    try:
        kafka_clients.require_topics(settings, consumer, [source, *targets])
        consumer.subscribe([source], listener=_ReadyLog(log, source, targets))
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            if not polled:
                continue
            for records in polled.values():
                for record in records:
                    if _is_window_update(record, log):
                        for target in targets:
                            producer.send(target, key=record.key, value=record.value)
                        forwarded += 1
                    else:
                        skipped += 1
            producer.flush()
            consumer.commit()
    finally:
        log.info("stopping: %d update(s) forwarded, %d record(s) skipped", forwarded, skipped)
        producer.flush()
        producer.close()
        consumer.close()


def _is_window_update(record, log: logging.Logger) -> bool:
    try:
        decode_window_update(record.value)
    except InvalidEvent as err:
        log.warning("skipping record at %s[%d]@%d: %s",
                    record.topic, record.partition, record.offset, err)
        return False
    return True
