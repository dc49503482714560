"""The message formats and event validation (pure logic, no services)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from emojistream import config
from emojistream.common.events import (
    EventValidator,
    InvalidEvent,
    decode_window_update,
    encode,
    format_timestamp,
    normalized_count,
    parse_timestamp,
    window_bounds,
)

UTC = UTC
IST = timezone(timedelta(hours=5, minutes=30))
RECEIVED = datetime(2026, 11, 27, 7, 15, 56, 123456, tzinfo=UTC)
RECEIVED_TEXT = "2026-11-27T07:15:56.123Z"
EMOJIS = ("🔥", "😀", "❤️")


@pytest.fixture
def validator() -> EventValidator:
    return EventValidator(EMOJIS, max_age_s=3.0, max_future_s=5.0)


def event(**changes) -> dict:
    base = {"user_id": "client_1", "emoji_type": "🔥", "timestamp": "2026-11-27T07:15:55.000Z"}
    base.update(changes)
    return {key: value for key, value in base.items() if value is not ...}


def rejection(validator, item) -> str:
    with pytest.raises(InvalidEvent) as raised:
        validator.validate(item, received_at=RECEIVED)
    return str(raised.value)


# --- the canonical form ---------------------------------------------------------------------

def test_valid_event_comes_back_canonical_without_extra_fields(validator):
    item = event(extra="dropped", admin=True)
    assert validator.validate(item, received_at=RECEIVED) == {
        "user_id": "client_1", "emoji_type": "🔥", "timestamp": "2026-11-27T07:15:55.000Z",
        "stream_id": "main"}


@pytest.mark.parametrize("stream_id", ["final-2026", "a", "Match_7.semi", "x" * 64, "main"])
def test_a_stream_id_is_kept(validator, stream_id):
    assert validator.validate(event(stream_id=stream_id), RECEIVED)["stream_id"] == stream_id


@pytest.mark.parametrize("stream_id, shown", [
    ("", '""'), ("x" * 65, '"' + "x" * 65 + '"'), ("final 2026", '"final 2026"'),
    ("fïnal", '"fïnal"'), ("a/b", '"a/b"'), (7, "7"), (None, "null"), (["main"], '["main"]')])
def test_a_bad_stream_id_is_named(validator, stream_id, shown):
    with pytest.raises(InvalidEvent) as err:
        validator.validate(event(stream_id=stream_id), RECEIVED)
    assert str(err.value) == ("stream_id must be 1 to 64 characters from A-Z, a-z, 0-9, '.', "
                              f"'_' and '-', got {shown}")


def test_from_settings_uses_the_configured_emojis_and_limits():
    settings = config.load({}, emojis="🦆,🦢", max_event_age_s=1.0)
    duck = EventValidator.from_settings(settings)
    assert duck.allowed_emojis == frozenset({"🦆", "🦢"})
    assert duck.max_age == timedelta(seconds=1)
    assert duck.max_future == timedelta(seconds=5)
    assert rejection(duck, event()) == \
        "emoji_type '🔥' is not one of the allowed emojis: 🦆, 🦢"


def test_encode_is_compact_utf8_json():
    assert encode({"user_id": "ü", "emoji_type": "🔥"}) == \
        '{"user_id":"ü","emoji_type":"🔥"}'.encode()


# --- shape and fields -----------------------------------------------------------------------

@pytest.mark.parametrize("item, message", [
    ([], "an event must be a JSON object, got array"),
    (None, "an event must be a JSON object, got null"),
    ("🔥", "an event must be a JSON object, got string"),
    (7, "an event must be a JSON object, got number"),
    (True, "an event must be a JSON object, got boolean"),
    ({}, "missing field(s): user_id, emoji_type, timestamp"),
    (event(user_id=...), "missing field(s): user_id"),
    (event(emoji_type=..., timestamp=...), "missing field(s): emoji_type, timestamp"),
])
def test_shape_and_missing_fields_are_named(validator, item, message):
    assert rejection(validator, item) == message


@pytest.mark.parametrize("user_id, message", [
    (5, "user_id must be a string, got number"),
    (None, "user_id must be a string, got null"),
    (["a"], "user_id must be a string, got array"),
    (True, "user_id must be a string, got boolean"),
    ("", "user_id must not be empty"),
    ("   ", "user_id must not be empty"),
    ("u" * 65, "user_id is longer than 64 characters"),
    ("bad\x00id", "user_id must not contain control characters"),
    ("bad\nid", "user_id must not contain control characters"),
    ("bad\tid", "user_id must not contain control characters"),
    ("bad\x7fid", "user_id must not contain control characters"),
    # Format characters (Unicode category Cf) count as control characters: invisible ones
    # like a zero-width space, a soft hyphen or a right-to-left override would make two
    # user ids look the same.
    ("bad\u200bid", "user_id must not contain control characters"),
    ("lone\ud800surrogate", "user_id must not contain control characters"),
    ("bad\u00adid", "user_id must not contain control characters"),
    ("bad\u202eid", "user_id must not contain control characters"),
    ("bad\u2028id", "user_id must not contain control characters"),
    ("bad\u2029id", "user_id must not contain control characters"),
])
def test_bad_user_ids(validator, user_id, message):
    assert rejection(validator, event(user_id=user_id)) == message


@pytest.mark.parametrize("user_id", ["u" * 64, "a", "client 1", "Zoë", "用户_42", "🔥fan",
                                     " padded "])
def test_good_user_ids_are_kept_as_sent(validator, user_id):
    assert validator.validate(event(user_id=user_id), RECEIVED)["user_id"] == user_id


def test_user_id_length_counts_characters_not_bytes(validator):
    user_id = "ü" * 64
    assert len(user_id.encode("utf-8")) == 128
    assert validator.validate(event(user_id=user_id), RECEIVED)["user_id"] == user_id


def test_first_problem_wins(validator):
    assert rejection(validator, event(user_id="", emoji_type="🍕", timestamp="never")) == \
        "user_id must not be empty"


@pytest.mark.parametrize("emoji, message", [
    ("🍕", "emoji_type '🍕' is not one of the allowed emojis: 🔥, 😀, ❤️"),
    ("", "emoji_type '' is not one of the allowed emojis: 🔥, 😀, ❤️"),
    # The configured heart carries the variation selector U+FE0F; the bare heart is another
    # string and is not silently mapped onto it.
    ("\u2764", "emoji_type '❤' is not one of the allowed emojis: 🔥, 😀, ❤️"),
    ("🔥🔥", "emoji_type '🔥🔥' is not one of the allowed emojis: 🔥, 😀, ❤️"),
    ("x" * 40, f"emoji_type '{'x' * 16}' is not one of the allowed emojis: 🔥, 😀, ❤️"),
    (None, "emoji_type must be a string, got null"),
    (1, "emoji_type must be a string, got number"),
    ({"e": "🔥"}, "emoji_type must be a string, got object"),
])
def test_bad_emojis(validator, emoji, message):
    assert rejection(validator, event(emoji_type=emoji)) == message


@pytest.mark.parametrize("emoji", EMOJIS)
def test_every_allowed_emoji_passes(validator, emoji):
    assert validator.validate(event(emoji_type=emoji), RECEIVED)["emoji_type"] == emoji


# --- timestamps -----------------------------------------------------------------------------

@pytest.mark.parametrize("sent, canonical", [
    ("2026-11-27T07:15:55.000Z", "2026-11-27T07:15:55.000Z"),
    ("2026-11-27T07:15:55Z", "2026-11-27T07:15:55.000Z"),
    ("2026-11-27T07:15:55.5+00:00", "2026-11-27T07:15:55.500Z"),
    ("2026-11-27T12:45:55.250+05:30", "2026-11-27T07:15:55.250Z"),
    ("2026-11-27T02:15:57-05:00", "2026-11-27T07:15:57.000Z"),
    ("2026-11-27T07:15:55.123456", "2026-11-27T07:15:55.123Z"),
    (1795763755000, "2026-11-27T07:15:55.000Z"),
    (1795763755123.9, "2026-11-27T07:15:55.123Z"),
    (1795763760000, "2026-11-27T07:16:00.000Z"),
])
def test_timestamp_forms_become_utc_with_milliseconds(validator, sent, canonical):
    assert validator.validate(event(timestamp=sent), RECEIVED)["timestamp"] == canonical


@pytest.mark.parametrize("sent, message", [
    (True, "timestamp must be an ISO-8601 string or epoch milliseconds, got true"),
    (False, "timestamp must be an ISO-8601 string or epoch milliseconds, got false"),
    ("yesterday", "timestamp 'yesterday' is not ISO-8601"),
    ("", "timestamp '' is not ISO-8601"),
    ("2026-13-01T00:00:00Z", "timestamp '2026-13-01T00:00:00Z' is not ISO-8601"),
    ("x" * 100, f"timestamp '{'x' * 64}' is not ISO-8601"),
    (float("nan"), "timestamp must be a finite number of epoch milliseconds"),
    (float("inf"), "timestamp must be a finite number of epoch milliseconds"),
    (float("-inf"), "timestamp must be a finite number of epoch milliseconds"),
    (1e300, "timestamp 1e+300 is out of range"),
    (-10 ** 18, f"timestamp {-10 ** 18} is out of range"),
])
def test_bad_timestamps(validator, sent, message):
    assert rejection(validator, event(timestamp=sent)) == message


@pytest.mark.parametrize("sent", [None, [], {}])
def test_timestamps_of_other_json_types_are_rejected(validator, sent):
    assert rejection(validator, event(timestamp=sent)).startswith(
        "timestamp must be an ISO-8601 string or epoch milliseconds, got ")


@pytest.mark.parametrize("offset", [timedelta(seconds=-3), timedelta(0), timedelta(seconds=5),
                                    timedelta(seconds=-2.999), timedelta(seconds=4.999)])
def test_timestamps_within_the_limits_are_kept(validator, offset):
    sent = RECEIVED + offset
    kept = validator.validate(event(timestamp=sent.isoformat()), RECEIVED)["timestamp"]
    assert kept == format_timestamp(sent)


@pytest.mark.parametrize("offset", [timedelta(seconds=-3, microseconds=-1),
                                    timedelta(hours=-1), timedelta(days=-400),
                                    timedelta(seconds=5, microseconds=1), timedelta(hours=3)])
def test_too_old_or_too_future_timestamps_become_the_receive_time(validator, offset):
    sent = (RECEIVED + offset).isoformat()
    assert validator.validate(event(timestamp=sent), RECEIVED)["timestamp"] == RECEIVED_TEXT


def test_epoch_zero_is_too_old_not_invalid(validator):
    assert validator.validate(event(timestamp=0), RECEIVED)["timestamp"] == RECEIVED_TEXT


def test_parse_timestamp_without_offset_means_utc():
    assert parse_timestamp("2026-11-27T07:15:56") == datetime(2026, 11, 27, 7, 15, 56,
                                                             tzinfo=UTC)


# --- format_timestamp -----------------------------------------------------------------------

@pytest.mark.parametrize("moment, text", [
    (datetime(2026, 11, 27, 7, 15, 56, 123456, tzinfo=UTC), "2026-11-27T07:15:56.123Z"),
    (datetime(2026, 11, 27, 7, 15, 56, tzinfo=UTC), "2026-11-27T07:15:56.000Z"),
    (datetime(2026, 11, 27, 7, 15, 56, 999999, tzinfo=UTC), "2026-11-27T07:15:56.999Z"),
    (datetime(2026, 11, 27, 7, 15, 56, 1000, tzinfo=UTC), "2026-11-27T07:15:56.001Z"),
    (datetime(2026, 11, 27, 12, 45, 56, 5000, tzinfo=IST), "2026-11-27T07:15:56.005Z"),
    (datetime(2026, 1, 1, 3, 0, tzinfo=IST), "2025-12-31T21:30:00.000Z"),
])
def test_format_timestamp(moment, text):
    assert format_timestamp(moment) == text


# --- normalized_count -----------------------------------------------------------------------

@pytest.mark.parametrize("count, expected", [(0, 0), (1, 0), (19, 0), (20, 1), (99, 1),
                                             (100, 1), (101, 2), (200, 2), (1234, 13)])
def test_normalized_count_default_rule(count, expected):
    assert normalized_count(count, threshold=20, divisor=100) == expected


@pytest.mark.parametrize("count, threshold, divisor, expected", [
    (4, 5, 10, 0), (5, 5, 10, 1), (11, 5, 10, 2), (1, 1, 1, 1), (7, 1, 1, 7),
    (999, 1000, 1, 0), (1000, 1000, 1, 1000), (1001, 0, 500, 3)])
def test_normalized_count_custom_rule(count, threshold, divisor, expected):
    assert normalized_count(count, threshold, divisor) == expected


# --- window_bounds --------------------------------------------------------------------------

def at(h, m, s, ms=0, tz=UTC) -> datetime:
    return datetime(2026, 11, 27, h, m, s, ms * 1000, tzinfo=tz)


@pytest.mark.parametrize("moment, seconds, start, end", [
    (at(7, 15, 57, 999), 2, at(7, 15, 56), at(7, 15, 58)),
    (at(7, 15, 56), 2, at(7, 15, 56), at(7, 15, 58)),
    (at(7, 15, 58), 2, at(7, 15, 58), at(7, 16, 0)),
    (at(7, 15, 59, 999), 2, at(7, 15, 58), at(7, 16, 0)),
    # 07:15:57 UTC is 1795763757 s after the epoch, a multiple of 3.
    (at(7, 15, 58, 500), 3, at(7, 15, 57), at(7, 16, 0)),
    (at(7, 15, 56, 999), 3, at(7, 15, 54), at(7, 15, 57)),
    (at(7, 15, 59), 60, at(7, 15, 0), at(7, 16, 0)),
    (at(12, 45, 57, 999, tz=IST), 2, at(7, 15, 56), at(7, 15, 58)),
])
def test_window_bounds_are_aligned_to_the_epoch(moment, seconds, start, end):
    assert window_bounds(moment, seconds) == (start, end)


def test_window_bounds_start_is_a_multiple_of_the_length_since_the_epoch():
    for seconds in (2, 3, 7, 10):
        start, end = window_bounds(at(7, 15, 57, 123), seconds)
        assert start.timestamp() % seconds == 0
        assert start <= at(7, 15, 57, 123) < end
        assert end - start == timedelta(seconds=seconds)
        assert start.tzinfo == UTC


def test_window_bounds_of_the_epoch_start():
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert window_bounds(epoch + timedelta(seconds=4), 3) == (
        epoch + timedelta(seconds=3), epoch + timedelta(seconds=6))


# --- decode_window_update -------------------------------------------------------------------

UPDATE = {"window_start": "2026-11-27T07:15:56.000Z", "window_end": "2026-11-27T07:15:58.000Z",
          "aggregates": [{"emoji_type": "🔥", "count": 1234, "normalized_count": 13,
                          "unique_users": 57}]}


def raw(message) -> bytes:
    return json.dumps(message).encode("utf-8")


def test_decode_valid_update():
    assert decode_window_update(raw(UPDATE)) == dict(UPDATE, stream_id="main")
    assert decode_window_update(encode(UPDATE)) == dict(UPDATE, stream_id="main")
    of_a_stream = dict(UPDATE, stream_id="final-2026")
    assert decode_window_update(encode(of_a_stream)) == of_a_stream


def test_decode_update_with_no_aggregates():
    empty = dict(UPDATE, aggregates=[])
    assert decode_window_update(raw(empty)) == dict(empty, stream_id="main")


def test_decode_refuses_an_update_of_a_bad_stream_id():
    with pytest.raises(InvalidEvent, match="stream_id must be 1 to 64 characters"):
        decode_window_update(encode(dict(UPDATE, stream_id="no spaces")))


@pytest.mark.parametrize("record, message", [
    (b"not json", "record is not JSON"),
    (b"", "record is not JSON"),
    (b"\xff\xfe\x00", "record is not JSON"),
    (None, "record is not JSON"),
    (b"[]", "record is not a JSON object"),
    (b"42", "record is not a JSON object"),
    (b'"text"', "record is not a JSON object"),
    (raw({k: v for k, v in UPDATE.items() if k != "window_start"}), "record has no window_start"),
    (raw(dict(UPDATE, window_start=None)), "record has no window_start"),
    (raw(dict(UPDATE, window_end=1795763758000)), "record has no window_end"),
    (raw({k: v for k, v in UPDATE.items() if k != "aggregates"}),
     "record has no valid aggregates list"),
    (raw(dict(UPDATE, aggregates={"🔥": 3})), "record has no valid aggregates list"),
    (raw(dict(UPDATE, aggregates=["🔥"])), "record has no valid aggregates list"),
    (raw(dict(UPDATE, aggregates=[{"count": 3}])), "record has no valid aggregates list"),
    (raw(dict(UPDATE, aggregates=[{"emoji_type": "🔥", "count": "3"}])),
     "record has no valid aggregates list"),
    (raw(dict(UPDATE, aggregates=[{"emoji_type": "🔥", "count": 3.5}])),
     "record has no valid aggregates list"),
    (raw(dict(UPDATE, aggregates=[UPDATE["aggregates"][0], {"emoji_type": "😀"}])),
     "record has no valid aggregates list"),
])
def test_decode_rejects_what_is_not_a_window_update(record, message):
    with pytest.raises(InvalidEvent) as raised:
        decode_window_update(record)
    assert str(raised.value) == message


# --- the poison that used to crash components ---------------------------------------------------

def test_json_nested_too_deeply_is_not_a_window_update():
    with pytest.raises(InvalidEvent, match="nested too deeply"):
        decode_window_update(b"[" * 100_000)


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_timestamp_beyond_utc_range_is_invalid(moment):
    with pytest.raises(InvalidEvent, match="out of range"):
        parse_timestamp(moment)
