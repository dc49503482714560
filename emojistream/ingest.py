"""The ingest API's way into Kafka: an asynchronous producer that refuses work it could lose.

Requests never wait for Kafka: records are buffered and sent in the background (linger, batches,
compression). Instead the sink watches whether Kafka keeps acknowledging. While records have
waited longer than PRODUCER_ACK_TIMEOUT_S, after a delivery failed, or while PRODUCER_BUFFER_BYTES
are waiting, ``send`` raises SinkUnavailable and the API answers 503: clients retry later rather
than being told "success" for records that might never arrive.

Records accepted in the moments before an outage is noticed are not lost either: the producer
retries them until the delivery timeout (KAFKA_DELIVERY_TIMEOUT_S, 2 minutes), so a broker
restart delivers them.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from kafka import KafkaProducer, codec
from kafka.errors import KafkaError, KafkaTimeoutError

from . import kafka_clients
from .config import Settings
from .events import encode

log = logging.getLogger(__name__)

# The longest a request may wait inside producer.send (for topic metadata).
MAX_BLOCK_MS = 200
# batch_size is in bytes; an encoded event is about this long.
RECORD_BYTES_ESTIMATE = 128
# Below the broker's default message.max.bytes (1 MiB + 12).
MAX_BATCH_BYTES = 1_000_000
# kafka-python backs off up to 30 s between reconnects by default; a restarted broker should be
# used again within a second.
RECONNECT_BACKOFF_MAX_MS = 1_000
# After a failed connect, answer 503 at once for this long instead of trying again per request.
CONNECT_RETRY_S = 5.0
# At most one metadata probe per this interval while a delivery failure blocks sending.
PROBE_INTERVAL_S = 1.0
# Below gunicorn's graceful_timeout (30 s), after which the master kills the worker.
CLOSE_TIMEOUT_S = 20.0

CODECS = {"gzip": (codec.has_gzip, "(built in)"), "snappy": (codec.has_snappy, "python-snappy"),
          "lz4": (codec.has_lz4, "lz4"), "zstd": (codec.has_zstd, "zstandard")}


class SinkUnavailable(RuntimeError):
    """Kafka cannot take records now; the message says why."""


def compression_type(settings: Settings) -> str | None:
    """PRODUCER_COMPRESSION as kafka-python wants it; ValueError when unusable here."""
    name = settings.producer_compression.strip().lower()
    if name in ("", "none"):
        return None
    if name not in CODECS:
        raise ValueError(f"PRODUCER_COMPRESSION must be one of none, {', '.join(CODECS)}; "
                         f"got {settings.producer_compression!r}")
    available, package = CODECS[name]
    if not available():
        raise ValueError(f"PRODUCER_COMPRESSION={name} needs the Python package {package}")
    return name


class KafkaEventSink:
    """Sends canonical events to the events topic, keyed by user_id; thread-safe.

    The producer is created on first use, so a sink built before gunicorn forks has no
    background thread yet; each worker process gets its own. ``producer_overrides`` are extra
    KafkaProducer options (tests shorten the delivery timeout with it). Retries are left at
    kafka-python's default, unlimited within the delivery timeout.
    """

    def __init__(self, settings: Settings,
                 connect_timeout_s: float = kafka_clients.DEFAULT_CONNECT_TIMEOUT_S,
                 producer_overrides: dict | None = None):
        self.settings = settings
        self._overrides = producer_overrides or {}
        self.topic = settings.emoji_events_topic
        self._compression = compression_type(settings)
        self._connect_timeout_s = connect_timeout_s
        self._connect_lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._connect_error = ""
        self._connect_failed_at = -math.inf
        # Delivery state, updated by request threads and the producer's network thread.
        self._lock = threading.Lock()
        self._pending = 0
        self._pending_bytes = 0
        self._progress_at = time.monotonic()
        self._failure: str | None = None
        self._lost = 0
        self._probe_at = -math.inf
        self._closed = False
        self._said_unavailable = False

    def producer_options(self) -> dict:
        s = self.settings
        return {"acks": "all", "enable_idempotence": True, "linger_ms": s.producer_linger_ms,
                "batch_size": min(s.producer_batch_records * RECORD_BYTES_ESTIMATE,
                                  MAX_BATCH_BYTES),
                "compression_type": self._compression, "max_block_ms": MAX_BLOCK_MS,
                **kafka_clients.delivery_options(s, s.producer_linger_ms),
                "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS, **self._overrides}

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
        log.info("producing to %s at %s", self.topic, self.settings.kafka_bootstrap_servers)
        return producer

    def problem(self) -> str | None:
        """Why Kafka cannot take records now, or None when it can."""
        try:
            self.connect()
        except SinkUnavailable as err:
            return str(err)
        with self._lock:
            problem = self._problem_locked(0)
        self._after_check(problem)
        return problem

    def send(self, events: list[dict]) -> None:
        """Queue the events for Kafka without waiting for it; SinkUnavailable when it is down."""
        producer = self.connect()
        records = [(event["user_id"].encode("utf-8"), encode(event)) for event in events]
        self._reserve(len(records), sum(len(key) + len(value) for key, value in records))
        for index, (key, value) in enumerate(records):
            try:
                future = producer.send(self.topic, value=value, key=key)
            except KafkaError as err:
                self._release(records[index:])
                raise SinkUnavailable(self._describe(err)) from None
            size = len(key) + len(value)
            future.add_callback(self._delivered, size).add_errback(self._failed, size)

    def _describe(self, err: KafkaError) -> str:
        if isinstance(err, KafkaTimeoutError) and "metadata" in str(err):
            return (f"no metadata for topic {self.topic} within {MAX_BLOCK_MS} ms "
                    "(is Kafka up, does the topic exist?)")
        return str(err)

    def _reserve(self, count: int, size: int) -> None:
        with self._lock:
            problem = self._problem_locked(size)
            if problem is None:
                if self._pending == 0:
                    self._progress_at = time.monotonic()
                self._pending += count
                self._pending_bytes += size
        self._after_check(problem)
        if problem is not None:
            raise SinkUnavailable(problem)

    def _release(self, records) -> None:
        with self._lock:
            self._pending -= len(records)
            self._pending_bytes -= sum(len(key) + len(value) for key, value in records)

    def _problem_locked(self, extra_bytes: int) -> str | None:
        if self._closed:
            return "the API is shutting down"
        if self._failure is not None:
            return f"a delivery failed: {self._failure}"
        waited = time.monotonic() - self._progress_at
        if self._pending and waited > self.settings.producer_ack_timeout_s:
            return (f"no acknowledgement for {waited:.1f} s, "
                    f"{self._pending} record(s) waiting")
        if self._pending_bytes + extra_bytes > self.settings.producer_buffer_bytes:
            return (f"the send buffer is full ({self._pending_bytes} bytes wait for Kafka, "
                    f"PRODUCER_BUFFER_BYTES={self.settings.producer_buffer_bytes})")
        return None

    def _after_check(self, problem: str | None) -> None:
        if problem is None:
            if self._said_unavailable:
                self._said_unavailable = False
                log.info("Kafka takes records again (%d record(s) lost since start)", self._lost)
            return
        self._say_unavailable(problem)
        if self._failure is not None:
            self._probe()

    def _say_unavailable(self, problem: str) -> None:
        if not self._said_unavailable:
            self._said_unavailable = True
            log.warning("Kafka is unavailable, answering 503: %s", problem)

    def _delivered(self, size: int, _metadata) -> None:
        with self._lock:
            self._pending -= 1
            self._pending_bytes -= size
            self._progress_at = time.monotonic()
            self._failure = None

    def _failed(self, size: int, error: Exception) -> None:
        with self._lock:
            self._pending -= 1
            self._pending_bytes -= size
            self._lost += 1
            first = self._failure is None
            self._failure = str(error)
        if first:
            log.error("Kafka did not take a record: %s", error)

    def _probe(self) -> None:
        """Ask for fresh metadata; an answer that knows the topic ends the failure state.

        Nothing else would: while failing, the API sends nothing, so no delivery can succeed.
        kafka-python has no public call for a metadata refresh, hence ``_metadata``.
        """
        with self._lock:
            now = time.monotonic()
            if now - self._probe_at < PROBE_INTERVAL_S:
                return
            self._probe_at = now
        future = self._producer._metadata.request_update()
        future.add_callback(self._probe_answered)

    def _probe_answered(self, cluster) -> None:
        if cluster.partitions_for_topic(self.topic):
            with self._lock:
                self._failure = None
                self._progress_at = time.monotonic()

    def flush(self, timeout_s: float) -> None:
        """Wait until Kafka has answered for every record sent (KafkaTimeoutError if not)."""
        if self._producer is not None:
            self._producer.flush(timeout_s)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Refuse new records, deliver the accepted ones, stop the producer.

        Called when a worker exits, so a graceful shutdown drops nothing that was answered 200.
        """
        with self._lock:
            self._closed = True
        producer = self._producer
        if producer is None:
            return
        try:
            producer.flush(timeout_s)
        except KafkaTimeoutError:
            log.error("Kafka did not acknowledge %d record(s) within %.0f s; they are lost",
                      self._pending, timeout_s)
            # Otherwise close() would flush again and raise again.
            producer._sender.force_close()
        producer.close(timeout=timeout_s)
        log.info("producer closed; %d record(s) lost since start", self._lost)
