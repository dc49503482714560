"""Moments: the windows where a stream's reactions jump (a wicket, a goal). The one rule, used by
the WebSocket servers (``"moment": true`` in the update viewers receive) and by the registration
API's history (GET /streams/ID/windows and /moments):

    a window is a moment when its total (the sum of its emojis' counts) exceeds MOMENT_FACTOR
    times the median total of the stream's windows that start in the MOMENT_LOOKBACK_S before
    it, and at least MOMENT_MIN_WINDOWS of those windows had reactions.

Windows without reactions are never sent, so they do not count (as zeros) in the median: a
quiet stream's first reaction after a lull is not a moment. Standard library only.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping


def is_moment(total: int, previous_totals: Iterable[int], factor: float,
              min_windows: int) -> bool:
    """Whether a window of ``total`` reactions is a moment after windows of ``previous_totals``
    (those of the look-back period that had reactions)."""
    previous = list(previous_totals)
    if len(previous) < max(1, min_windows):
        return False
    return total > factor * statistics.median(previous)


def median(totals: Iterable[int]) -> float:
    return float(statistics.median(list(totals)))


def previous_totals(totals: Mapping[float, int], start: float, lookback_s: float) -> list[int]:
    """The totals of the windows that start in [start - lookback_s, start), from ``totals``
    (window start in epoch seconds -> total)."""
    return [total for other, total in totals.items() if start - lookback_s <= other < start]


def window_total(update: dict) -> int:
    """A window update's total: the sum of its emojis' counts."""
    return sum(a["count"] for a in update["aggregates"])


def with_member(data: bytes, name: str, value: str) -> bytes:
    """An update (a JSON object's text) with ``"name": value`` (``value`` already JSON) added as
    its last member, without decoding it again."""
    body = data.rstrip()
    if not body.endswith(b"}"):
        return data
    return body[:-1] + f',"{name}":{value}}}'.encode()


def with_moment(data: bytes) -> bytes:
    return with_member(data, "moment", "true")
