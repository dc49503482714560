"""A stream's history for everyone: GET /streams/ID/windows (each window's last update in a
time range, oldest first) and GET /streams/ID/moments (the windows of that range that are
moments), read from Kafka (history.py; docs/delivery.md#history)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from flask import Flask, request

from emojistream.common.events import (
    InvalidEvent,
    check_stream_id,
    format_timestamp,
    parse_timestamp,
)
from emojistream.common.json_api import ApiError
from emojistream.common.streams import StreamCatalog, UnknownStream
from emojistream.registration.history import HistoryReader, HistoryUnavailable, Window
from emojistream.registration.settings import RegistrationSettings

log = logging.getLogger("registration_api")

PARAMETERS = ("from", "to", "limit")
HISTORY = "history"  # app.extensions key of the HistoryReader


def parse_time(name: str, text: str) -> float:
    """A query parameter's time (ISO-8601, as updates carry window_start) in epoch seconds;
    ApiError 400 naming the parameter."""
    try:
        if not text:
            raise InvalidEvent("empty")
        return parse_timestamp(text).timestamp()
    except (InvalidEvent, ValueError, OverflowError):
        raise ApiError(400, f"{name} must be an ISO-8601 time like 2026-12-05T08:42:26.000Z "
                            f"(URL-encoded), got {text[:64]!r}") from None


def history_query(args, settings: RegistrationSettings, now: float) -> tuple[float, float, int]:
    """(from, to, limit) of a history request's query string, defaults applied: to now, from
    HISTORY_DEFAULT_RANGE_S (at most HISTORY_MAX_RANGE_S) before to, limit HISTORY_MAX_LIMIT;
    ApiError 400 naming the bad parameter."""
    unknown = sorted(set(args) - set(PARAMETERS))
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0][:32]!r} (there are from, to and "
                            "limit)")
    end = parse_time("to", args["to"]) if "to" in args else now
    start = (parse_time("from", args["from"]) if "from" in args
             else end - min(settings.history_default_range_s, settings.history_max_range_s))
    if start >= end:
        raise ApiError(400, f"from ({_iso(start)}) must be before to ({_iso(end)})")
    if end - start > settings.history_max_range_s:
        length = f"{end - start:.3f}".rstrip("0").rstrip(".")
        raise ApiError(400, f"from {_iso(start)} to {_iso(end)} is {length} s; at most "
                            f"{settings.history_max_range_s:g} s (HISTORY_MAX_RANGE_S)")
    limit = settings.history_max_limit
    if "limit" in args:
        text = args["limit"]
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= limit):
            raise ApiError(400, f"limit must be an integer from 1 to {limit} "
                                f"(HISTORY_MAX_LIMIT), got {text[:32]!r}")
        limit = int(text)
    return start, end, limit


def _iso(seconds: float) -> str:
    return format_timestamp(datetime.fromtimestamp(seconds, tz=UTC))


def known_stream_id(stream_id: str, streams: StreamCatalog) -> str:
    try:
        return streams.require(check_stream_id(stream_id))
    except InvalidEvent as err:
        raise ApiError(400, str(err)) from None
    except UnknownStream as err:
        raise ApiError(404, str(err)) from None


def with_moment(window: Window) -> dict:
    """The window's update as viewers receive it: "moment": true when it is one."""
    return {**window.update, "moment": True} if window.moment else window.update


def add_history_routes(app: Flask, settings: RegistrationSettings, streams: StreamCatalog,
                       reader: HistoryReader | None = None) -> None:
    reader = reader if reader is not None else HistoryReader(settings)
    app.extensions[HISTORY] = reader

    def read(stream_id: str) -> tuple[float, float, int, list[Window]]:
        stream_id = known_stream_id(stream_id, streams)
        start, end, limit = history_query(request.args, settings, time.time())
        try:
            return start, end, limit, reader.windows(stream_id, start, end)
        except HistoryUnavailable as err:
            log.warning("history of %s not read: %s", stream_id, err)
            raise ApiError(503, f"history unavailable: {err}",
                           headers={"Retry-After": "1"}) from None

    def answer(stream_id: str, start: float, end: float, limit: int, items: list[Window],
               name: str, render) -> dict:
        kept = items[:limit]
        return {"stream_id": stream_id, "from": _iso(start), "to": _iso(end),
                "order": "oldest first", name: [render(w) for w in kept],
                "next_from": items[limit].update["window_start"] if len(items) > limit else None}

    @app.get("/streams/<stream_id>/windows")
    def stream_windows(stream_id: str):
        start, end, limit, windows = read(stream_id)
        return answer(stream_id, start, end, limit, windows, "windows", with_moment)

    @app.get("/streams/<stream_id>/moments")
    def stream_moments(stream_id: str):
        start, end, limit, windows = read(stream_id)
        return answer(stream_id, start, end, limit, [w for w in windows if w.moment],
                      "moments", lambda w: {**with_moment(w), "total": w.total,
                                            "previous_median": w.previous_median})
