"""The WebSocket servers' memory of what they have broadcast (emojistream/delivery/dedup.py)."""

from __future__ import annotations

import json

import pytest

from emojistream.common.events import InvalidEvent
from emojistream.delivery.dedup import WindowDeduplicator


def update(second: int, count: int = 1, emoji: str = "🔥") -> dict:
    start = f"2026-11-27T07:00:{second:02d}.000Z"
    return {"window_start": start, "window_end": "end",
            "aggregates": [{"emoji_type": emoji, "count": count}]}


def test_each_version_is_new_once_then_a_duplicate():
    dedup = WindowDeduplicator(4)
    assert [dedup.check(update(0, 1)), dedup.check(update(0, 1)), dedup.check(update(0, 2)),
            dedup.check(update(0, 1))] == ["new", "duplicate", "new", "duplicate"]


def test_the_same_update_with_its_keys_in_another_order_is_a_duplicate():
    dedup = WindowDeduplicator(4)
    reordered = json.loads('{"aggregates": [{"count": 1, "emoji_type": "🔥"}], '
                           '"window_end": "end", "window_start": "2026-11-27T07:00:00.000Z"}')
    assert [dedup.check(update(0)), dedup.check(reordered)] == ["new", "duplicate"]


def test_windows_beyond_the_capacity_are_forgotten_and_then_stale():
    dedup = WindowDeduplicator(2)
    assert [dedup.check(update(s)) for s in (0, 2, 4)] == ["new", "new", "new"]
    # Window 0 was forgotten when window 4 came: anything for it, or older, is stale now.
    assert dedup.check(update(0, 5)) == "stale"
    assert dedup.check(update(2)) == "duplicate"
    assert dedup.check(update(2, 7)) == "new"


def test_an_older_window_than_all_remembered_is_stale_once_the_memory_is_full():
    dedup = WindowDeduplicator(2)
    dedup.check(update(10))
    dedup.check(update(12))
    assert dedup.check(update(8)) == "stale"


def test_a_capacity_below_one_remembers_one_window():
    dedup = WindowDeduplicator(0)
    assert [dedup.check(update(0)), dedup.check(update(0)), dedup.check(update(2)),
            dedup.check(update(0))] == ["new", "duplicate", "new", "stale"]


def test_an_unreadable_window_start_is_invalid():
    with pytest.raises(InvalidEvent):
        WindowDeduplicator(2).check({"window_start": "yesterday", "aggregates": []})


def test_an_update_with_a_lone_surrogate_is_deduplicated_like_any_other():
    lone = json.loads('{"window_start": "2026-11-27T07:00:00.000Z", "window_end": "b", '
                      '"aggregates": [{"emoji_type": "\\ud800", "count": 1}]}')
    dedup = WindowDeduplicator(4)
    assert [dedup.check(lone), dedup.check(lone)] == ["new", "duplicate"]
