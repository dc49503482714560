"""The ingest API's settings (docs/operations.md#settings)."""

from __future__ import annotations

from dataclasses import dataclass

from emojistream.common.settings import SharedSettings


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
