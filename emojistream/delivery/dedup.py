"""Which window updates a WebSocket server has broadcast already.

Both subscribers of a cluster forward every update, so each version of a window normally arrives
twice; the server broadcasts the first copy and drops the second (see docs/delivery.md).
"""

from __future__ import annotations

import hashlib
import json

from emojistream.common.events import parse_timestamp


class WindowDeduplicator:
    """The content hashes of the updates broadcast for each of the ``capacity`` most recent
    windows (by window start)."""

    NEW, DUPLICATE, STALE = "new", "duplicate", "stale"

    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self._seen: dict[float, set[bytes]] = {}
        self._horizon: float | None = None  # the newest window forgotten so far

    def check(self, update: dict) -> str:
        """NEW (and remembered) for a version of a window not broadcast before; DUPLICATE for
        one that was; STALE for a window older than all remembered ones. InvalidEvent when the
        window start is not a timestamp."""
        start = parse_timestamp(update["window_start"]).timestamp()
        if self._horizon is not None and start <= self._horizon:
            return self.STALE
        seen = self._seen.get(start)
        if seen is None:
            if len(self._seen) >= self.capacity and start < min(self._seen):
                return self.STALE
            seen = self._seen[start] = set()
        digest = _content_hash(update)
        if digest in seen:
            return self.DUPLICATE
        seen.add(digest)
        while len(self._seen) > self.capacity:
            oldest = min(self._seen)
            del self._seen[oldest]
            self._horizon = oldest if self._horizon is None else max(self._horizon, oldest)
        return self.NEW


def _content_hash(update: dict) -> bytes:
    """The same for the same update however it is formatted (key order, whitespace)."""
    canonical = json.dumps(update, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode("utf-8", "surrogatepass"), digest_size=16).digest()
