"""The known live streams: every reaction, window and viewer belongs to one of them.

The known streams are those of STREAMS (comma-separated, default "main": the original single
swarm) and those added at run time through the registration API's admin endpoint, which writes
them to a compacted Kafka topic (STREAMS_TOPIC): a record keyed by the stream id adds it, a
tombstone (no value) removes it. Every process that needs to know the streams (each ingest API
worker, the registration API) reads that topic from its start and then follows it, so a stream
added anywhere is known everywhere within about a second, and the list survives restarts.

    catalog = StreamCatalog(settings)
    catalog.start()                 # a thread that follows the topic
    catalog.known("final-2026")     # -> bool
    catalog.require("final-2026")   # -> the id, or UnknownStream (answered 404)
    StreamWriter(settings).add("final-2026")
"""

from __future__ import annotations

import logging
import threading

from kafka import TopicPartition
from kafka.errors import KafkaError

from emojistream.common import kafka_clients
from emojistream.common.events import InvalidEvent, check_stream_id, encode
from emojistream.common.settings import SharedSettings as Settings

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500
# How long to wait before looking for the topic again when it does not exist (yet).
MISSING_TOPIC_RETRY_S = 5.0
# How long stop() waits for the thread that follows the topic.
STOP_WAIT_S = 1.0


class UnknownStream(LookupError):
    """A well-formed stream id that is not one of the known streams."""

    def __init__(self, stream_id: str):
        super().__init__(f"unknown stream_id {stream_id!r}: GET /streams on the registration "
                         "API lists the live streams")
        self.stream_id = stream_id


class StreamCatalog:
    """The known streams, kept up to date by a thread that follows the streams topic; reads are
    thread-safe. Until the topic is read (or while Kafka is away) it knows STREAMS and what it
    read last."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.configured = frozenset(settings.stream_ids)
        # Replaced whole, never changed in place: readers (every ingest request) need no lock.
        self._known: frozenset[str] = self.configured
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None

    def known(self, stream_id: str) -> bool:
        return stream_id in self._known

    def require(self, stream_id: str) -> str:
        if stream_id not in self._known:
            raise UnknownStream(stream_id)
        return stream_id

    def all(self) -> list[str]:
        """The known streams: the configured ones first, then the added ones, by name."""
        return sorted(self.configured) + sorted(self._known - self.configured)

    def start(self) -> StreamCatalog:
        self._thread = threading.Thread(target=self._follow, daemon=True, name="stream-catalog")
        self._thread.start()
        return self

    def wait_caught_up(self, timeout_s: float) -> bool:
        """Wait until the topic has been read to its end once (True), or for ``timeout_s``."""
        return self._caught_up.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # Not longer: the thread may be waiting out a Kafka connect timeout, and holds
            # nothing that must be saved (it is a daemon; its consumer commits nothing).
            self._thread.join(timeout=STOP_WAIT_S)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                consumer = kafka_clients.consumer(self.settings, enable_auto_commit=False,
                                                  group_id=None)
            except kafka_clients.KafkaUnavailable as err:
                log.warning("cannot read the streams topic (%s); trying again", err)
                self._stop.wait(MISSING_TOPIC_RETRY_S)
                continue
            try:
                self._read(consumer)
            except KafkaError as err:
                log.warning("lost the streams topic (%s); reading it again", err)
            finally:
                consumer.close()

    def _read(self, consumer) -> None:
        topic = self.settings.streams_topic
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            log.warning("topic %s does not exist; the known streams are STREAMS only "
                        "(run scripts/create_topics.sh)", topic)
            self._caught_up.set()
            self._stop.wait(MISSING_TOPIC_RETRY_S)
            return
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        end = consumer.end_offsets(assigned)
        streams: set[str] = set()
        while not self._stop.is_set():
            for batch in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).values():
                for record in batch:
                    self._apply(streams, record)
            caught_up = all(consumer.position(tp) >= end[tp] for tp in assigned)
            if caught_up or self._caught_up.is_set():
                self._known = self.configured | streams
                self._caught_up.set()

    def _apply(self, streams: set[str], record) -> None:
        try:
            stream_id = check_stream_id(record.key.decode("utf-8") if record.key else None)
        except (UnicodeDecodeError, InvalidEvent):
            log.warning("skipping a record of %s that names no stream (offset %d)",
                        record.topic, record.offset)
            return
        if record.value is None:
            streams.discard(stream_id)
        else:
            streams.add(stream_id)


class StreamWriter:
    """Adds and removes streams (the registration API's admin endpoint)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._producer = kafka_clients.producer(settings, acks="all")

    def add(self, stream_id: str) -> None:
        self._write(stream_id, encode({"stream_id": stream_id}))

    def remove(self, stream_id: str) -> None:
        self._write(stream_id, None)

    def _write(self, stream_id: str, value: bytes | None) -> None:
        """Written and acknowledged by Kafka, or KafkaError."""
        self._producer.send(self.settings.streams_topic, key=stream_id.encode("utf-8"),
                            value=value).get(timeout=10)

    def close(self) -> None:
        self._producer.close()
