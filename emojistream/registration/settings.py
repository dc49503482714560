"""The registration API's settings (docs/operations.md#settings)."""

from __future__ import annotations

from dataclasses import dataclass

from emojistream.client.settings import ViewerSettings
from emojistream.common.settings import ConfigError


@dataclass(frozen=True)
class RegistrationSettings(ViewerSettings):
    registration_workers: int = 2  # granian worker processes (stateless: any number)
    registration_threads: int = 4  # threads of each worker
    registration_max_body_bytes: int = 4096
    registration_rate_per_address: float = 100.0
    registration_burst_per_address: int = 20_000
    token_ttl_s: float = 3600.0
    ws_health_poll_s: float = 1.0
    ws_health_timeout_s: float = 2.0
    web_stats_interval_s: float = 5.0  # how often the page asks for the viewer counts
    streams_max: int = 100  # POST /streams refuses a stream beyond this many (STREAMS included)
    # History (GET /streams/ID/windows and /moments, read from aggregated-emoji-topic).
    history_default_range_s: float = 300.0  # without from: the last 5 minutes before to
    history_max_range_s: float = 3600.0  # to - from at most this long (a larger range: 400)
    history_max_limit: int = 1800  # windows in one answer (an hour of 2 s windows); the default
    history_late_s: float = 300.0  # records written this long after a window's end still read
    history_kafka_timeout_s: float = 5.0  # connecting to Kafka
    history_read_timeout_s: float = 10.0  # one read; beyond it (or Kafka down): 503
    history_readers: int = 4  # reads at once in each process (each with its own consumer)

    def __post_init__(self):
        super().__post_init__()
        if min(self.history_default_range_s, self.history_max_range_s, self.history_late_s,
               self.history_kafka_timeout_s, self.history_read_timeout_s) <= 0 \
                or self.history_max_limit < 1 or self.history_readers < 1:
            raise ConfigError("the HISTORY_* settings must be more than 0")
