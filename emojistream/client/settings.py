"""The viewers' settings: the simulator's and the web page's (docs/operations.md#settings)."""

from __future__ import annotations

from dataclasses import dataclass

from emojistream.common.settings import SharedSettings


@dataclass(frozen=True)
class ViewerSettings(SharedSettings):
    viewer_retry_initial_s: float = 0.5  # reconnect backoff: doubling up to the max
    viewer_retry_max_s: float = 8.0
