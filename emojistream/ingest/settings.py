"""The ingest API's settings (docs/operations.md#settings)."""

from __future__ import annotations

from dataclasses import dataclass

from emojistream.common.settings import ConfigError, SharedSettings


@dataclass(frozen=True)
class IngestSettings(SharedSettings):
    api_workers: int = 2
    api_threads: int = 4  # of each worker
    api_max_batch: int = 10_000  # events of one POST /emojis
    api_max_body_bytes: int = 2 * 1024 * 1024
    api_cors_origins: str = ""  # comma-separated, or "*"; empty: the registration API's page
    producer_linger_ms: int = 50
    producer_events_per_record: int = 500
    producer_buffer_bytes: int = 64 * 1024 * 1024
    producer_compression: str = "lz4"
    producer_ack_timeout_s: float = 5.0  # answer 503 while records wait this long
    # Events (not requests) each client address may send: a burst, then a rate (0: no limit).
    api_events_per_s_per_address: float = 10_000.0
    api_events_burst_per_address: int = 20_000
    # POST /emoji(s) with a viewer's token only (Authorization: Bearer ...), the user id taken
    # from it, and a rate per viewer.
    api_require_token: bool = False
    api_events_per_s_per_viewer: float = 20.0
    api_events_burst_per_viewer: int = 200

    def __post_init__(self):
        super().__post_init__()
        for name in ("api_events_per_s_per_address", "api_events_per_s_per_viewer"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.upper()} must not be negative (0: no limit), got "
                                  f"{getattr(self, name):g}")
        if self.producer_ack_timeout_s >= self.ingest_delivery_timeout_s:
            raise ConfigError(f"PRODUCER_ACK_TIMEOUT_S ({self.producer_ack_timeout_s:g} s) must "
                              f"be less than INGEST_DELIVERY_TIMEOUT_S "
                              f"({self.ingest_delivery_timeout_s:g} s): the API must refuse new "
                              "events (503) while what it accepted may still be delivered")
        for name in ("api_events_burst_per_address", "api_events_burst_per_viewer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.upper()} must be at least 1, got {getattr(self, name)}")
