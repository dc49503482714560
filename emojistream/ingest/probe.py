"""Whether Kafka knows a topic again, asked in the background while deliveries fail."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from emojistream.common import kafka_clients
from emojistream.common.settings import SharedSettings

# At most one probe per this interval.
PROBE_INTERVAL_S = 1.0


class MetadataProbe:
    """Asks a broker for fresh metadata (KafkaConsumer.topics(), which always asks), at most
    once per PROBE_INTERVAL_S and one question at a time; calls ``on_known`` when the answer
    knows the topic."""

    def __init__(self, settings: SharedSettings, topic: str, connect_timeout_s: float,
                 on_known: Callable[[], None]):
        self.settings, self.topic, self.on_known = settings, topic, on_known
        self._connect_timeout_s = connect_timeout_s
        self._asked_at = -math.inf
        self._lock = threading.Lock()
        self._asking = threading.Lock()
        self._consumer: KafkaConsumer | None = None

    def ask(self) -> None:
        """Ask in the background, unless asked less than PROBE_INTERVAL_S ago."""
        with self._lock:
            now = time.monotonic()
            if now - self._asked_at < PROBE_INTERVAL_S:
                return
            self._asked_at = now
        threading.Thread(target=self._ask_once, daemon=True, name="metadata-probe").start()

    def _ask_once(self) -> None:
        if not self._asking.acquire(blocking=False):
            return  # the previous question still waits for its answer
        try:
            if self._consumer is None:
                self._consumer = kafka_clients.consumer(
                    self.settings, connect_timeout_s=self._connect_timeout_s)
            known = self.topic in self._consumer.topics()
        except (KafkaError, kafka_clients.KafkaUnavailable):
            return
        finally:
            self._asking.release()
        if known:
            self.on_known()

    def close(self) -> None:
        """Close the consumer, unless a question still waits for its answer (then it goes with
        the process)."""
        if self._asking.acquire(timeout=1.0):
            try:
                if self._consumer is not None:
                    self._consumer.close()
            finally:
                self._asking.release()
