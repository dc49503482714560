"""A stream's window history, read from Kafka, the system of record (docs/delivery.md#history).

aggregated-emoji-topic holds every version of every window the aggregator wrote, keyed
"STREAM/WINDOW_START", compacted on that key (emojistream/ops/topics.py: each window's last
version stays once compaction has run) and deleted past its retention. A read of the windows
that start in [from, to):

1. seeks each partition to the first record written at or after ``from`` minus the look-back
   of moments, a window and MAX_EVENT_FUTURE_S + EVENT_TIME_MARGIN_S (a record is written after
   the events it counts arrived, and an event's time is at most that far ahead of its arrival);
2. reads up to the records written HISTORY_LATE_S after ``to``'s last window ended (late
   events, and an aggregator that restarted, write a window again later), or to the end;
3. keeps the last version of each window of the stream (later offsets replace earlier ones;
   a key is always in the same partition), oldest window first.

Public kafka-python API only: offsets_for_times, assign, seek, poll, end_offsets.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from emojistream.common import kafka_clients, moments
from emojistream.common.events import InvalidEvent, decode_window_update, parse_timestamp
from emojistream.registration.settings import RegistrationSettings

log = logging.getLogger("registration_api")

POLL_MS = 200


class HistoryUnavailable(RuntimeError):
    """Kafka could not be read (down, too slow, or too many reads at once); answered 503."""


@dataclass(frozen=True)
class Window:
    """A window's last update in Kafka, its total, and whether it is a moment."""

    start: float
    update: dict
    total: int
    moment: bool
    previous_median: float | None  # the median total of the look-back's windows (None: fewer
    # than MOMENT_MIN_WINDOWS of them)


class HistoryReader:
    """Reads windows from aggregated-emoji-topic; thread-safe. At most HISTORY_READERS reads at
    once, each on a consumer of its own, kept between reads."""

    def __init__(self, settings: RegistrationSettings):
        self.settings = settings
        self._slots = threading.BoundedSemaphore(settings.history_readers)
        self._idle: queue.SimpleQueue[KafkaConsumer] = queue.SimpleQueue()

    def windows(self, stream_id: str, start: float, end: float) -> list[Window]:
        """The last update of each window of ``stream_id`` that starts in [start, end) (epoch
        seconds), oldest first, each marked as a moment or not; HistoryUnavailable."""
        settings = self.settings
        updates = self.read(stream_id, start - settings.moment_lookback_s, end)
        totals = {s: moments.window_total(u) for s, u in updates.items()}
        found = []
        for window_start in sorted(updates):
            if window_start < start:
                continue
            previous = moments.previous_totals(totals, window_start, settings.moment_lookback_s)
            total = totals[window_start]
            median = (moments.median(previous)
                      if len(previous) >= settings.moment_min_windows else None)
            found.append(Window(window_start, updates[window_start], total,
                                moments.is_moment(total, previous, settings.moment_factor,
                                                  settings.moment_min_windows), median))
        return found

    def read(self, stream_id: str, start: float, end: float) -> dict[float, dict]:
        """Window start -> the last update in Kafka of each window of ``stream_id`` that starts
        in [start, end)."""
        settings = self.settings
        deadline = time.monotonic() + settings.history_read_timeout_s
        if not self._slots.acquire(timeout=settings.history_read_timeout_s):
            raise HistoryUnavailable(f"{settings.history_readers} history reads are under way "
                                     "(HISTORY_READERS); try again shortly")
        consumer = None
        try:
            consumer = self._consumer()
            found = self._read(consumer, stream_id, start, end, deadline)
            self._idle.put(consumer)
            consumer = None
            return found
        except kafka_clients.KafkaUnavailable as err:
            raise HistoryUnavailable(str(err)) from None
        except KafkaError as err:
            raise HistoryUnavailable(f"Kafka at {settings.kafka_bootstrap_servers} could not "
                                     f"be read ({type(err).__name__})") from None
        finally:
            if consumer is not None:  # failed: it is not reused
                consumer.close()
            self._slots.release()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def _consumer(self) -> KafkaConsumer:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        timeout_ms = int(self.settings.history_read_timeout_s * 1000)
        return kafka_clients.consumer(
            self.settings, connect_timeout_s=self.settings.history_kafka_timeout_s,
            group_id=None, enable_auto_commit=False, fetch_max_wait_ms=POLL_MS,
            request_timeout_ms=max(timeout_ms, 1000))

    def _read(self, consumer: KafkaConsumer, stream_id: str, start: float, end: float,
              deadline: float) -> dict[float, dict]:
        settings = self.settings
        topic = settings.aggregated_topic
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise kafka_clients.MissingTopic(settings, [topic])
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        timeout_ms = int(max(0.1, deadline - time.monotonic()) * 1000)
        first_ms = int((start - settings.window_seconds - settings.max_event_future_s
                        - settings.event_time_margin_s) * 1000)
        last_ms = int((end + settings.window_seconds + settings.history_late_s) * 1000)
        firsts = consumer.offsets_for_times({tp: max(0, first_ms) for tp in assigned},
                                            timeout_ms=timeout_ms)
        lasts = consumer.offsets_for_times({tp: last_ms for tp in assigned},
                                           timeout_ms=timeout_ms)
        ends = consumer.end_offsets(assigned, timeout_ms=timeout_ms)
        begins: dict[TopicPartition, int] = {}
        stops: dict[TopicPartition, int] = {}
        for tp in assigned:
            first, last = firsts.get(tp), lasts.get(tp)
            stop = ends[tp] if last is None else last.offset
            begin = stop if first is None else first.offset
            if begin < stop:  # else nothing of the range in this partition
                begins[tp], stops[tp] = begin, stop
        consumer.assign(list(stops))
        for tp, begin in begins.items():
            consumer.seek(tp, begin)
        prefix = f"{stream_id}/".encode()
        found: dict[float, dict] = {}
        records = 0
        pending = dict(stops)
        while pending:
            if time.monotonic() > deadline:
                raise HistoryUnavailable(
                    f"reading {topic} took longer than {settings.history_read_timeout_s:g} s "
                    "(HISTORY_READ_TIMEOUT_S)")
            for tp, batch in consumer.poll(timeout_ms=POLL_MS).items():
                for record in batch:
                    if record.offset >= stops.get(tp, 0):
                        break
                    records += 1
                    if record.key is None or not record.key.startswith(prefix):
                        continue
                    self._keep(found, record.value, stream_id, start, end)
            pending = {tp: stop for tp, stop in pending.items() if consumer.position(tp) < stop}
        log.debug("read %d record(s) of %s for %s: %d window(s)", records, topic, stream_id,
                  len(found))
        consumer.assign([])
        return found

    @staticmethod
    def _keep(found: dict[float, dict], value: bytes | None, stream_id: str, start: float,
              end: float) -> None:
        try:
            update = decode_window_update(value or b"")
            window_start = parse_timestamp(update["window_start"]).timestamp()
        except InvalidEvent:
            return
        if update["stream_id"] == stream_id and start <= window_start < end:
            found[window_start] = update
