"""The ingest API's way into Kafka: events coalesced into records, sent in the background, and
503 instead of accepting what could be lost.

A request hands its accepted events to an in-process buffer and returns; a flusher thread
writes the buffer to Kafka every PRODUCER_LINGER_MS, or as soon as PRODUCER_EVENTS_PER_RECORD
events wait, as records of many events (records.py): Kafka's per-record cost is paid once.

Durability. A 200 means the events are valid and in this process's buffer; they reach Kafka
within PRODUCER_LINGER_MS plus Kafka's acknowledgement (acks=all, idempotent producer), and
through a broker outage the producer retries them, within INGEST_DELIVERY_TIMEOUT_S of their
receipt in all (delivery_bound below; the aggregator's watermark waits that long, see
docs/operations.md#event-time-and-delivery); past it they are counted lost. The sink answers
503 while records have waited more than PRODUCER_ACK_TIMEOUT_S for an acknowledgement, after a
delivery failed, or while PRODUCER_BUFFER_BYTES of events wait. A graceful stop (SIGTERM) sends
and flushes everything first. A crash of the process (SIGKILL, power loss) loses the events not
yet acknowledged: normally those of the last linger interval and the round trip to Kafka, at
most the events accepted in the last PRODUCER_ACK_TIMEOUT_S (and never more than
PRODUCER_BUFFER_BYTES of them).
"""

from __future__ import annotations

import logging
import math
import threading
import time

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from emojistream.common import kafka_clients
from emojistream.common.events import encode
from emojistream.ingest.metrics import IngestMetrics
from emojistream.ingest.records import Record, coalesce, compression_type
from emojistream.ingest.settings import IngestSettings

log = logging.getLogger(__name__)

# How long a request may wait in producer.send for topic metadata: only the first request of a
# worker does (the flusher sends everything after), and it must not hang on a Kafka that is down.
MAX_BLOCK_MS = 200
# Below the broker's default message.max.bytes (1 MiB + 12), for one batch.
MAX_BATCH_BYTES = 1_000_000
# The producer batches the flusher's records for a moment more: they come all at once.
PRODUCER_LINGER_MS = 5
# kafka-python backs off up to 30 s between reconnects by default; a restarted broker should be
# used again within a second.
RECONNECT_BACKOFF_MAX_MS = 1_000
# After a failed connect, answer 503 at once for this long instead of trying again per request.
CONNECT_RETRY_S = 5.0
# At most one metadata probe per this interval while a delivery failure blocks sending.
PROBE_INTERVAL_S = 1.0
# How long the flusher waits before trying a send again that Kafka refused at once.
SEND_RETRY_S = 0.5
# The share of INGEST_DELIVERY_TIMEOUT_S (counted from the receipt of a record's earliest event)
# in which the flusher tries again a send the producer refused at once; the producer's own
# delivery timeout is the rest, less the linger.
SEND_RETRY_SHARE = 0.25
# A request waits at most this fraction of the producer's delivery timeout for its answer: three
# tries fit in it (a broker cut off, then a leader not yet moved, then the new leader).
REQUEST_SHARE = 3
# How long a stopping worker waits for Kafka to acknowledge what it accepted.
CLOSE_TIMEOUT_S = 20.0

class SinkUnavailable(RuntimeError):
    """Kafka cannot take events now; the message says why."""


class KafkaEventSink:
    """Coalesces accepted events into records and sends them to the events topic; thread-safe.

    The producer and the flusher thread start on first use, so a sink built before the HTTP
    server forks has neither yet; each worker process gets its own. ``producer_overrides`` are
    extra KafkaProducer options (tests shorten the delivery timeout with it).
    """

    def __init__(self, settings: IngestSettings,
                 connect_timeout_s: float = kafka_clients.DEFAULT_CONNECT_TIMEOUT_S,
                 producer_overrides: dict | None = None, counters: IngestMetrics | None = None):
        self.settings = settings
        self.counters = counters if counters is not None else IngestMetrics()
        self._overrides = producer_overrides or {}
        self.topic = settings.emoji_events_topic
        self._compression = compression_type(settings)
        self._connect_timeout_s = connect_timeout_s
        self._linger_s = settings.producer_linger_ms / 1000
        self._span_ms = int(settings.event_time_margin_s * 1000 / 2)
        self._connect_lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._flusher: threading.Thread | None = None
        self._connect_error = ""
        self._connect_failed_at = -math.inf
        # Delivery state, shared by request threads, the flusher and the producer's thread.
        self._lock = threading.Condition()
        self._buffer: list[tuple[int, list[bytes]]] = []  # (received ms, encoded events)
        self._buffered = 0      # events in the buffer
        self._handing_over = False  # the flusher has taken the buffer, not yet sent it all
        self._flush_now = False
        self._pending = 0       # events in the buffer or sent and not yet acknowledged
        self._pending_bytes = 0
        self._progress_at = time.monotonic()
        self._failure: str | None = None
        self._probe_at = -math.inf
        self._closed = False
        self._said_unavailable = False

    def delivery_bound(self) -> tuple[float, float]:
        """(how long the flusher may try again a refused send, the producer's delivery
        timeout), in seconds: with the linger, INGEST_DELIVERY_TIMEOUT_S in all."""
        bound = self.settings.ingest_delivery_timeout_s
        retry_s = bound * SEND_RETRY_SHARE
        linger_s = (self.settings.producer_linger_ms + PRODUCER_LINGER_MS) / 1000
        return retry_s, max(1.0, bound - retry_s - linger_s)

    def producer_options(self) -> dict:
        _, delivery_s = self.delivery_bound()
        delivery = kafka_clients.delivery_options(self.settings, PRODUCER_LINGER_MS, delivery_s)
        # A request to a broker cut off the network gets no answer: it must time out early
        # enough to be sent again to the partition's new leader within the delivery timeout.
        delivery["request_timeout_ms"] = min(delivery["request_timeout_ms"],
                                             max(1_000, int(delivery_s * 1000 / REQUEST_SHARE)))
        return {"acks": "all", "enable_idempotence": True, "linger_ms": PRODUCER_LINGER_MS,
                "batch_size": MAX_BATCH_BYTES, "max_request_size": MAX_BATCH_BYTES + 50_000,
                "compression_type": self._compression, "max_block_ms": MAX_BLOCK_MS,
                **delivery, "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
                **self._overrides}

    def connect(self) -> KafkaProducer:
        """The producer, created now if need be; SinkUnavailable when Kafka cannot be reached."""
        if self._producer is not None:
            return self._producer
        if self._closed:
            raise SinkUnavailable("the API is shutting down")
        if not self._connect_lock.acquire(blocking=False):
            raise SinkUnavailable("still connecting to Kafka")
        try:
            if self._producer is None:
                self._producer = self._create_producer()
                self._flusher = threading.Thread(target=self._flush_forever, daemon=True,
                                                 name="event-flusher")
                self._flusher.start()
            return self._producer
        finally:
            self._connect_lock.release()

    def _create_producer(self) -> KafkaProducer:
        if time.monotonic() - self._connect_failed_at < CONNECT_RETRY_S:
            raise SinkUnavailable(self._connect_error)
        try:
            producer = kafka_clients.producer(self.settings, self._connect_timeout_s,
                                              **self.producer_options())
        except kafka_clients.KafkaUnavailable as err:
            self._connect_error, self._connect_failed_at = str(err), time.monotonic()
            self._say_unavailable(str(err))
            raise SinkUnavailable(str(err)) from None
        if not self._topic_known(producer):
            producer.close(timeout=1)
            message = (f"no metadata for topic {self.topic} within {self._connect_timeout_s:g} s "
                       "(is Kafka up, does the topic exist?)")
            self._connect_error, self._connect_failed_at = message, time.monotonic()
            raise SinkUnavailable(message) from None
        log.info("producing to %s at %s, up to %d events a record",
                 self.topic, self.settings.kafka_bootstrap_servers,
                 self.settings.producer_events_per_record)
        return producer

    def _topic_known(self, producer: KafkaProducer) -> bool:
        """The topic's metadata, fetched now so that the flusher never waits for it. A topic
        created a moment ago may take brokers a while to know (scripts/run.sh starts the API
        right after creating the topics): asked again until the connect timeout."""
        deadline = time.monotonic() + self._connect_timeout_s
        while True:
            try:
                producer.partitions_for(self.topic)
                return True
            except KafkaTimeoutError:
                if time.monotonic() >= deadline:
                    return False

    def problem(self) -> str | None:
        """Why Kafka cannot take events now, or None when it can."""
        try:
            self.connect()
        except SinkUnavailable as err:
            return str(err)
        with self._lock:
            problem = self._problem_locked(0)
        self._after_check(problem)
        return problem

    def send(self, events: list[dict], received_at: float | None = None) -> None:
        """Take the events (received at ``received_at``, epoch seconds; default now) for Kafka
        without waiting for it; SinkUnavailable when it cannot take them."""
        self.connect()
        encoded = [encode(event) for event in events]
        size = sum(len(event) for event in encoded)
        received_ms = int((time.time() if received_at is None else received_at) * 1000)
        with self._lock:
            problem = self._problem_locked(size)
            if problem is None:
                if self._pending == 0:
                    self._progress_at = time.monotonic()
                self._buffer.append((received_ms, encoded))
                self._buffered += len(encoded)
                self._pending += len(encoded)
                self._pending_bytes += size
                if (self._buffered >= self.settings.producer_events_per_record
                        or len(self._buffer) == 1):  # a record's worth, or the linger starts
                    self._lock.notify_all()
        self._after_check(problem)
        if problem is not None:
            raise SinkUnavailable(problem)

    def pending(self) -> tuple[int, int]:
        """The events, and their bytes, that wait for Kafka's acknowledgement now."""
        with self._lock:
            return self._pending, self._pending_bytes

    def _problem_locked(self, extra_bytes: int) -> str | None:
        if self._closed:
            return "the API is shutting down"
        if self._failure is not None:
            return f"a delivery failed: {self._failure}"
        waited = time.monotonic() - self._progress_at
        if self._pending and waited > self.settings.producer_ack_timeout_s:
            return (f"no acknowledgement for {waited:.1f} s, "
                    f"{self._pending} event(s) waiting")
        if self._pending_bytes + extra_bytes > self.settings.producer_buffer_bytes:
            return (f"the send buffer is full ({self._pending_bytes} bytes wait for Kafka, "
                    f"PRODUCER_BUFFER_BYTES={self.settings.producer_buffer_bytes})")
        return None

    def _after_check(self, problem: str | None) -> None:
        if problem is None:
            if self._said_unavailable:
                self._said_unavailable = False
                log.info("Kafka takes events again (%d event(s) lost since start)",
                         self.counters.lost_count())
            return
        self._say_unavailable(problem)
        if self._failure is not None:
            self._probe()

    def _say_unavailable(self, problem: str) -> None:
        if not self._said_unavailable:
            self._said_unavailable = True
            log.warning("Kafka is unavailable, answering 503: %s", problem)

    # --- the flusher ---

    def _flush_forever(self) -> None:
        """Take the buffer every linger interval (or once a record's worth waits) and send it;
        until the sink is closed and its buffer empty."""
        while True:
            batches = self._next_batches()
            if batches is None:
                return
            for record in coalesce(batches, self.settings.producer_events_per_record,
                                   self._span_ms):
                self._send_record(record)
            with self._lock:
                self._handing_over = False
                self._lock.notify_all()

    def _next_batches(self) -> list[tuple[int, list[bytes]]] | None:
        with self._lock:
            while not self._buffer and not self._closed:
                self._lock.wait()
            if not self._buffer:
                return None
            deadline = time.monotonic() + self._linger_s
            while (self._buffered < self.settings.producer_events_per_record
                   and not (self._closed or self._flush_now)
                   and time.monotonic() < deadline):
                self._lock.wait(deadline - time.monotonic())
            batches, self._buffer, self._buffered = self._buffer, [], 0
            self._handing_over, self._flush_now = True, False
            return batches

    def _send_record(self, record: Record) -> None:
        """Hand the record to the producer; while it refuses at once (Kafka gone), try again
        (the events were accepted) for the retry share of INGEST_DELIVERY_TIMEOUT_S since their
        receipt, then count them lost: the producer's delivery timeout must still fit in it."""
        retry_s, _ = self.delivery_bound()
        give_up_at = time.monotonic() + retry_s - (time.time() - record.received_ms / 1000)
        assert self._producer is not None  # the flusher starts with it
        while True:
            try:
                future = self._producer.send(self.topic, value=record.value(),
                                             timestamp_ms=record.received_ms)
                break
            except KafkaError as err:
                with self._lock:
                    self._failure = self._failure or str(err)
                if time.monotonic() > give_up_at:
                    self._failed(record, err)
                    return
                time.sleep(SEND_RETRY_S)
        future.add_callback(self._delivered, record).add_errback(self._failed, record)

    def _delivered(self, record: Record, _metadata) -> None:
        with self._lock:
            self._pending -= len(record.events)
            self._pending_bytes -= record.size - len(record.events)
            self._progress_at = time.monotonic()
            self._failure = None

    def _failed(self, record: Record, error: Exception) -> None:
        with self._lock:
            self._pending -= len(record.events)
            self._pending_bytes -= record.size - len(record.events)
            first = self._failure is None
            self._failure = str(error)
        self.counters.send_errors.inc()
        self.counters.lost.inc(len(record.events))
        if first:
            log.error("Kafka did not take a record of %d event(s): %s", len(record.events),
                      error)

    def _probe(self) -> None:
        """Ask the producer for fresh metadata (at most once per PROBE_INTERVAL_S); an answer
        that knows the topic ends the failure state. Nothing else would: while failing, the API
        sends nothing, so no delivery can succeed."""
        with self._lock:
            now = time.monotonic()
            if now - self._probe_at < PROBE_INTERVAL_S:
                return
            self._probe_at = now
        kafka_clients.request_metadata(self._producer).add_callback(self._probe_answered)

    def _probe_answered(self, cluster) -> None:
        if cluster.partitions_for_topic(self.topic):
            with self._lock:
                self._failure = None
                self._progress_at = time.monotonic()

    # --- the end ---

    def flush(self, timeout_s: float) -> None:
        """Send what waits in the buffer now and wait until Kafka has answered for every record
        sent (KafkaTimeoutError if not)."""
        if self._producer is None:
            return
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while (self._buffer or self._handing_over) and time.monotonic() < deadline:
                self._flush_now = bool(self._buffer)
                self._lock.notify_all()
                self._lock.wait(deadline - time.monotonic())
        self._producer.flush(max(0.0, deadline - time.monotonic()))

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Refuse new events, deliver the accepted ones, stop the producer.

        Called when a worker exits, so a graceful shutdown drops nothing that was answered 200.
        """
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        producer, flusher = self._producer, self._flusher
        if producer is None or flusher is None:
            return
        flusher.join(timeout_s)
        try:
            producer.flush(timeout_s)
        except KafkaTimeoutError:
            log.error("Kafka did not acknowledge %d event(s) within %.0f s; they are lost",
                      self._pending, timeout_s)
            kafka_clients.force_close(producer)  # else close() would flush and raise again
        producer.close(timeout=timeout_s)
        log.info("producer closed; %d event(s) lost since start", self.counters.lost_count())
