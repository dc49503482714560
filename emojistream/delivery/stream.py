"""One live stream on one WebSocket server: its viewers here, its deduplication, and the latest
update of each of its RECOVERY_MAX_WINDOWS newest windows: a connecting viewer gets the two
newest (its snapshot), or with ``since`` every one after the window it saw last (recovery)."""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.server import ServerConnection

from emojistream.common import moments
from emojistream.common.events import parse_timestamp
from emojistream.delivery.dedup import WindowDeduplicator

# The windows of a stream whose latest update a viewer without ``since`` gets as it connects.
SNAPSHOT_WINDOWS = 2


class MomentRule:
    """The settings of common/moments.py's rule."""

    def __init__(self, factor: float = 3.0, lookback_s: float = 60.0, min_windows: int = 5):
        self.factor, self.lookback_s, self.min_windows = factor, lookback_s, min_windows

    @classmethod
    def from_settings(cls, settings) -> MomentRule:
        return cls(settings.moment_factor, settings.moment_lookback_s,
                   settings.moment_min_windows)


class Stream:
    def __init__(self, dedup_windows: int, recovery_windows: int = SNAPSHOT_WINDOWS,
                 rule: MomentRule | None = None, elsewhere: Callable[[], int] = lambda: 0):
        self.viewers: set[ServerConnection] = set()
        # The viewers that asked for no presence (presence=0): their updates are the
        # aggregator's as they are, without "watching".
        self.bare: set[ServerConnection] = set()
        self._elsewhere = elsewhere  # the stream's viewers on the other servers (presence.py)
        self.dedup = WindowDeduplicator(dedup_windows)
        self.capacity = max(SNAPSHOT_WINDOWS, recovery_windows)
        self.recent: dict[float, tuple[str, bytes, int]] = {}  # start -> (window, data, total)
        # Recovery is complete for a ``since`` at or after this window start: every window
        # after it that reached this server is held. None until the first update: the server
        # cannot know what came before it started (or before the stream's first update here).
        self.complete_from: float | None = None
        # Updates queued in the broadcaster and not yet broadcast (they reach the viewers
        # connected when they are; a connecting viewer's snapshot must not hold them too).
        self.pending = 0
        # Moments: the latest total of each window of the look-back period (and newer), as
        # updates arrive (before their broadcast), whether or not anyone watches.
        self.rule = rule if rule is not None else MomentRule()
        self.totals: dict[float, int] = {}

    def moment(self, window: str, total: int) -> bool:
        """Whether this version of ``window`` (of ``total`` reactions) is a moment, after the
        windows before it that reached this server (common/moments.py); it is then counted
        for the windows after it."""
        start = parse_timestamp(window).timestamp()
        rule = self.rule
        found = moments.is_moment(
            total, moments.previous_totals(self.totals, start, rule.lookback_s), rule.factor,
            rule.min_windows)
        self.totals[start] = total
        newest = max(self.totals)
        for old in [s for s in self.totals if s < newest - 2 * rule.lookback_s]:
            del self.totals[old]
        return found

    def remember(self, window: str, data: bytes, total: int) -> None:
        """The latest update of ``window``, as it is broadcast (or, nobody watching, at once)."""
        start = parse_timestamp(window).timestamp()
        if self.complete_from is None:
            self.complete_from = start
        if len(self.recent) >= self.capacity and start < min(self.recent):
            # A late update of a window older than all held: not kept, so a since before it
            # is no longer complete.
            self.complete_from = max(self.complete_from, start)
            return
        self.recent[start] = (window, data, total)
        while len(self.recent) > self.capacity:
            oldest = min(self.recent)
            del self.recent[oldest]
            self.complete_from = max(self.complete_from, oldest)

    def snapshot(self) -> list[bytes]:
        """The latest update of each of the two newest windows, oldest window first."""
        return [self.recent[start][1] for start in sorted(self.recent)[-SNAPSHOT_WINDOWS:]]

    def since(self, since: float) -> tuple[list[bytes], bool]:
        """The latest update of every held window after ``since`` (a window start, epoch
        seconds), oldest first, and whether that is all of them (no window after ``since``
        was forgotten or came before this server held the stream)."""
        complete = self.complete_from is not None and since >= self.complete_from
        return [self.recent[start][1] for start in sorted(self.recent) if start > since], complete

    def watching(self) -> int:
        """Presence: this stream's live viewer connections here and on the other servers."""
        return len(self.viewers) + self._elsewhere()

    def health(self) -> dict:
        latest = max(self.recent) if self.recent else None
        window, _, total = self.recent[latest] if latest is not None else (None, b"", 0)
        return {"viewers": len(self.viewers), "last_window": window,
                "last_window_total": total}


def with_watching(data: bytes, watching: int) -> bytes:
    return moments.with_member(data, "watching", str(watching))
