"""Message formats of the pipeline and the validation of incoming emoji events.

An emoji event, as clients send it ("stream_id" may be left out: the stream is "main"):

    {"user_id": "client_1", "emoji_type": "🔥", "timestamp": "2026-11-27T07:15:56.123Z",
     "stream_id": "final-2026"}

On the emoji-events topic the API writes JSON arrays of such events, each with its stream_id.
A window update, as the aggregator writes it and as every later stage forwards it to viewers:

    {"stream_id": "main", "window_start": "...Z", "window_end": "...Z",
     "aggregates": [{"emoji_type": "🔥", "count": 1234, "normalized_count": 13,
                     "unique_users": 57}, ...]}
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import UTC, datetime, timedelta

import orjson

from emojistream.common.settings import STREAM_ID

MAX_USER_ID_LENGTH = 64
EVENT_FIELDS = ("user_id", "emoji_type", "timestamp")
# The stream of an event, a window update or a viewer that names none: the original swarm.
DEFAULT_STREAM = "main"
# format_timestamp's output: a timestamp sent in this form is kept as sent.
CANONICAL_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", re.ASCII)


class InvalidEvent(ValueError):
    """An event that must not enter the pipeline; the message says what is wrong."""


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and a Z, the one timestamp format on the topics."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_timestamp(value) -> datetime:
    """An aware UTC datetime from an ISO-8601 string (UTC when it has no offset) or from epoch
    milliseconds given as a JSON number."""
    if isinstance(value, bool):
        raise InvalidEvent("timestamp must be an ISO-8601 string or epoch milliseconds, "
                           f"got {json.dumps(value)}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidEvent("timestamp must be a finite number of epoch milliseconds")
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidEvent(f"timestamp {value} is out of range") from None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(f"timestamp {value[:64]!r} is not ISO-8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise InvalidEvent(f"timestamp {value[:64]!r} is out of range") from None
    raise InvalidEvent("timestamp must be an ISO-8601 string or epoch milliseconds, "
                       f"got {json_type(value)}")


def _has_control_characters(text: str) -> bool:
    # isprintable() is false for every forbidden category (and a few allowed ones, like
    # no-break spaces): the character scan runs only for the rare ids it does not clear.
    return not text.isprintable() and any(
        unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in text)


class EventValidator:
    """Checks events against the configured rules and returns them in canonical form."""

    def __init__(self, allowed_emojis, max_age_s: float, max_future_s: float):
        self.allowed_emojis = frozenset(allowed_emojis)
        self._allowed_list = ", ".join(allowed_emojis)
        self.max_age = timedelta(seconds=max_age_s)
        self.max_future = timedelta(seconds=max_future_s)
        self._received: tuple[datetime | None, str] = (None, "")

    @classmethod
    def from_settings(cls, settings) -> EventValidator:
        return cls(settings.allowed_emojis, settings.max_event_age_s, settings.max_event_future_s)

    def validate(self, event, received_at: datetime) -> dict:
        """The event as it goes to Kafka, or InvalidEvent naming the first problem found.

        A timestamp older than the aggregator could still count, or too far in the future, is
        replaced by ``received_at``, so a wrong client clock neither loses the event nor lands it
        in a window nobody watches.
        """
        if not isinstance(event, dict):
            raise InvalidEvent(f"an event must be a JSON object, got {json_type(event)}")
        missing = [name for name in EVENT_FIELDS if name not in event]
        if missing:
            raise InvalidEvent("missing field(s): " + ", ".join(missing))
        user_id, emoji, timestamp = (event[name] for name in EVENT_FIELDS)
        check_identifier(user_id, "user_id")
        self._check_emoji(emoji)
        stream_id = check_stream_id(event.get("stream_id", DEFAULT_STREAM))
        moment = parse_timestamp(timestamp)
        if not (received_at - self.max_age <= moment <= received_at + self.max_future):
            timestamp = self._format_received(received_at)
        elif not (isinstance(timestamp, str) and CANONICAL_TIMESTAMP.fullmatch(timestamp)):
            timestamp = format_timestamp(moment)
        return {"user_id": user_id, "emoji_type": emoji, "timestamp": timestamp,
                "stream_id": stream_id}

    def _format_received(self, received_at: datetime) -> str:
        """format_timestamp(received_at), once per request's receive time (a tuple, so that
        request threads sharing the validator never see half an update)."""
        moment, text = self._received
        if moment != received_at:
            text = format_timestamp(received_at)
            self._received = (received_at, text)
        return text

    def _check_emoji(self, emoji) -> None:
        if not isinstance(emoji, str):
            raise InvalidEvent(f"emoji_type must be a string, got {json_type(emoji)}")
        if emoji not in self.allowed_emojis:
            raise InvalidEvent(f"emoji_type {emoji[:16]!r} is not one of the allowed emojis: "
                               f"{self._allowed_list}")


def check_identifier(value, field: str) -> None:
    """The rules of a user or client id: a non-empty string of at most MAX_USER_ID_LENGTH
    characters, none of them a control character; InvalidEvent naming ``field`` otherwise."""
    if not isinstance(value, str):
        raise InvalidEvent(f"{field} must be a string, got {json_type(value)}")
    if not value.strip():
        raise InvalidEvent(f"{field} must not be empty")
    if len(value) > MAX_USER_ID_LENGTH:
        raise InvalidEvent(f"{field} is longer than {MAX_USER_ID_LENGTH} characters")
    if _has_control_characters(value):
        raise InvalidEvent(f"{field} must not contain control characters")


def check_stream_id(value) -> str:
    """A stream id: 1 to 64 characters from [A-Za-z0-9._-]; InvalidEvent naming the field."""
    if not isinstance(value, str) or not STREAM_ID.fullmatch(value):
        shown = json.dumps(value, ensure_ascii=False)[:80]
        raise InvalidEvent(f"stream_id must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' "
                           f"and '-', got {shown}")
    return value


def json_type(value) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def encode(message: dict | list) -> bytes:
    """Compact UTF-8 JSON (orjson: measured 20 times faster than the standard library's on
    events, docs/benchmarks.md)."""
    return orjson.dumps(message)


def decode_window_update(raw: bytes | str) -> dict:
    """A window update from a topic record, or InvalidEvent when it is not one."""
    try:
        message = json.loads(raw)
    except (ValueError, TypeError):
        raise InvalidEvent("record is not JSON") from None
    except RecursionError:
        raise InvalidEvent("record is JSON nested too deeply") from None
    if not isinstance(message, dict):
        raise InvalidEvent("record is not a JSON object")
    message["stream_id"] = check_stream_id(message.get("stream_id", DEFAULT_STREAM))
    for name in ("window_start", "window_end"):
        if not isinstance(message.get(name), str):
            raise InvalidEvent(f"record has no {name}")
    aggregates = message.get("aggregates")
    if not isinstance(aggregates, list) or not all(
            isinstance(a, dict) and isinstance(a.get("emoji_type"), str)
            and type(a.get("count")) is int for a in aggregates):
        raise InvalidEvent("record has no valid aggregates list")
    return message


def normalized_count(count: int, threshold: int, divisor: int) -> int:
    """ceil(count / divisor) once count reaches the threshold, else 0 (the aggregator computes
    the same in Spark; this is its reference)."""
    return math.ceil(count / divisor) if count >= threshold else 0


def window_bounds(moment: datetime, window_seconds: int) -> tuple[datetime, datetime]:
    """The tumbling window, aligned to the epoch, that holds ``moment``."""
    epoch_s = moment.timestamp()
    start = math.floor(epoch_s / window_seconds) * window_seconds
    start_dt = datetime.fromtimestamp(start, tz=UTC)
    return start_dt, start_dt + timedelta(seconds=window_seconds)
