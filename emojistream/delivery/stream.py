"""One live stream on one WebSocket server: its viewers here, its deduplication, and the latest
update of its two newest windows (what a viewer gets as it connects)."""

from __future__ import annotations

from websockets.asyncio.server import ServerConnection

from emojistream.common.events import parse_timestamp
from emojistream.delivery.dedup import WindowDeduplicator

# The windows of a stream whose latest update a viewer gets as it connects.
SNAPSHOT_WINDOWS = 2


class Stream:
    def __init__(self, dedup_windows: int):
        self.viewers: set[ServerConnection] = set()
        self.dedup = WindowDeduplicator(dedup_windows)
        self.recent: dict[float, tuple[str, bytes, int]] = {}  # start -> (window, data, total)

    def remember(self, update: dict, data: bytes) -> None:
        start = parse_timestamp(update["window_start"]).timestamp()
        if len(self.recent) >= SNAPSHOT_WINDOWS and start < min(self.recent):
            return  # a late update of an older window
        total = sum(a["count"] for a in update["aggregates"])
        self.recent[start] = (update["window_start"], data, total)
        while len(self.recent) > SNAPSHOT_WINDOWS:
            del self.recent[min(self.recent)]

    def snapshot(self) -> list[bytes]:
        """The latest update of each recent window, oldest window first."""
        return [self.recent[start][1] for start in sorted(self.recent)]

    def health(self) -> dict:
        latest = max(self.recent) if self.recent else None
        window, _, total = self.recent[latest] if latest is not None else (None, b"", 0)
        return {"viewers": len(self.viewers), "last_window": window,
                "last_window_total": total}
