"""Forward window updates from one Kafka topic to others: the publishers' common loop.

At-least-once: a polled batch is committed only once every target topic has acknowledged each of
its updates (acks=all). When a send fails for a reason that may pass (a broker down for longer
than the producer's delivery timeout, no leader, too few replicas), nothing is committed: the
consumer goes back to the batch's first records and sends them again after a backoff, as long as
it takes. A publisher that crashes resumes from its last commit. So an update may be forwarded
twice, which viewers treat as the same update again, but never lost. Records that are not window
updates, or that Kafka can never take (too large), are skipped, counted and logged, and never
block the stream. Any other refusal that retrying cannot fix (an authorization failure, an
invalid record or topic: Kafka's errors whose ``retriable`` is False) stops the publisher
without committing the batch (PublishRefused): it exits non-zero, its supervisor starts it again,
and it resumes from the update that failed, which it sends again, until the cause is fixed.
"""

from __future__ import annotations

import logging
import threading

from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from emojistream.common import kafka_clients, metrics
from emojistream.common.backoff import Backoff
from emojistream.common.events import InvalidEvent, decode_window_update
from emojistream.common.settings import SharedSettings as Settings

POLL_TIMEOUT_MS = 200
LINGER_MS = 5
# How long a send may wait for the target topic's metadata or for buffer space.
MAX_BLOCK_MS = 10_000
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 5.0
# A flush waits at most this much longer than the delivery timeout.
FLUSH_MARGIN_S = 5.0


# Refusals of one record that no retry can change: the record is skipped.
TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


class SendFailed(RuntimeError):
    """Kafka did not acknowledge an update, for a reason that may pass: send it again."""


class PublishRefused(RuntimeError):
    """Kafka refused an update for a reason that retrying cannot fix: stop, commit nothing."""


class Relay:
    """Forwards the window updates of ``source`` to each of ``targets``."""

    def __init__(self, settings: Settings, source: str, targets: list[str], group_id: str,
                 log: logging.Logger):
        self.settings, self.source, self.targets, self.log = settings, source, targets, log
        self.consumer = kafka_clients.consumer(settings, group_id=group_id,
                                               enable_auto_commit=False,
                                               auto_offset_reset="earliest")
        self.producer = self._new_producer()
        self.metrics = metrics.RelayMetrics()
        self._backoff = Backoff(RETRY_INITIAL_S, RETRY_MAX_S)
        listener = kafka_clients.ReadyLog(log, source, group_id,
                                          "forwarding to " + ", ".join(targets),
                                          self.metrics.ready)
        try:
            self.group = kafka_clients.subscribe(settings, self.consumer, [source], listener,
                                                 required=[source, *targets], log=log)
        except kafka_clients.KafkaUnavailable:
            self.close()
            raise

    def run(self, stop: threading.Event) -> None:
        """Forward until ``stop`` is set."""
        while not stop.is_set():
            polled = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            self.group.check()
            self.metrics.observe_lag(self.consumer)
            if not polled:
                continue
            try:
                self._forward(polled)
            except SendFailed as err:
                self._rewind(polled)
                self._drop_producer()
                delay = self._backoff.next_delay()
                self.metrics.retried.inc()
                self.log.warning("%s; not committing: sending the batch again in %.1f s "
                                 "(attempt %d)", err, delay, self._backoff.attempts)
                stop.wait(delay)
                continue
            if self._backoff.attempts:
                self.log.info("Kafka acknowledges again, after %d attempt(s)",
                              self._backoff.attempts)
                self._backoff.reset()
            self._commit()

    def _new_producer(self):
        return kafka_clients.producer(
            self.settings, acks="all", linger_ms=LINGER_MS, max_block_ms=MAX_BLOCK_MS,
            **kafka_clients.delivery_options(self.settings, LINGER_MS))

    def _drop_producer(self) -> None:
        """After a failed batch: the next attempt gets a fresh producer. The batch is sent again
        anyway, and the old one may hold records it can no longer deliver (seen here: after a
        broker came back, a flush that never returned)."""
        if self.producer is not None:
            self.producer.close(timeout=0)
            self.producer = None

    def _producer(self):
        if self.producer is None:
            try:
                self.producer = self._new_producer()
            except kafka_clients.KafkaUnavailable as err:
                raise SendFailed(str(err)) from None
        return self.producer

    def close(self) -> None:
        self.log.info("stopping: %d update(s) forwarded, %d record(s) skipped, %d batch(es) "
                      "sent again", *self.metrics.totals())
        if self.producer is not None:
            self.producer.close()
        self.consumer.close()

    def _forward(self, polled: dict) -> None:
        """Send every update of the batch to every target and wait for Kafka's answers;
        SendFailed when one failed for a reason that may pass."""
        producer = self._producer()
        sent = []
        for records in polled.values():
            for record in records:
                if not self._is_update(record):
                    continue
                try:
                    sent.append((record, [
                        producer.send(target, key=record.key, value=record.value)
                        for target in self.targets]))
                except MessageSizeTooLargeError as err:
                    self._skip(record, str(err))
                except KafkaError as err:  # no metadata for a target in time: Kafka is down
                    raise SendFailed(f"could not send an update: {err}") from None
        try:
            producer.flush(self.settings.kafka_delivery_timeout_s + FLUSH_MARGIN_S)
        except KafkaError as err:
            raise SendFailed(f"Kafka did not answer for the batch in time: {err}") from None
        forwarded = 0
        for record, futures in sent:
            errors = [future.exception for future in futures if future.failed()]
            if any(getattr(err, "retriable", False) for err in errors):
                raise SendFailed(f"Kafka did not take an update for {len(self.targets)} "
                                 f"topic(s): {errors[0]}")
            fatal = [err for err in errors if not isinstance(err, TOO_LARGE)]
            if fatal:
                raise PublishRefused(
                    f"Kafka refused the update at {record.topic}[{record.partition}]@"
                    f"{record.offset} for a reason that retrying cannot fix: {fatal[0]!r}; "
                    "nothing of its batch is committed")
            if errors:
                self._skip(record, f"Kafka refused it: {errors[0]}")
            else:
                forwarded += 1
        self.metrics.forwarded.inc(forwarded)

    def _is_update(self, record) -> bool:
        try:
            decode_window_update(record.value)
            return True
        except InvalidEvent as err:
            self._skip(record, str(err))
            return False

    def _skip(self, record, reason: str) -> None:
        self.metrics.skipped.inc()
        self.log.warning("skipping record at %s[%d]@%d: %s (%d skipped so far)", record.topic,
                         record.partition, record.offset, reason, self.metrics.skipped_count())

    def _rewind(self, polled: dict) -> None:
        """Back to the first record of each partition of the batch, so the next poll returns
        the batch again (a partition lost to a rebalance resumes from its last commit)."""
        for tp, records in polled.items():
            try:
                self.consumer.seek(tp, records[0].offset)
            except (KafkaError, AssertionError):  # no longer assigned to this member
                pass

    def _commit(self) -> None:
        try:
            self.consumer.commit()
        except KafkaError as err:
            # The batch is forwarded again after a restart or a rebalance (duplicates are
            # dropped downstream); nothing is lost.
            self.log.warning("could not commit (%s); the batch may be forwarded again", err)


def relay(settings: Settings, source: str, targets: list[str], group_id: str,
          log: logging.Logger, stop: threading.Event, metrics_port: int | None = None) -> None:
    """Forward every window update of ``source`` to each of ``targets`` until ``stop`` is set,
    serving the metrics on ``metrics_port``. KafkaUnavailable (or its MissingTopic) when Kafka or
    a topic is not there."""
    forwarder = Relay(settings, source, targets, group_id, log)
    if metrics_port:
        metrics.serve(forwarder.metrics.registry, settings.metrics_host, metrics_port, log.name)
    try:
        forwarder.run(stop)
    finally:
        forwarder.close()
