"""The registration API's settings (docs/operations.md#settings)."""

from __future__ import annotations

from dataclasses import dataclass

from emojistream.client.settings import ViewerSettings


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
