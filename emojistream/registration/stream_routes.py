"""The streams of the registration API: GET /streams for everyone, POST /streams and DELETE
/streams/ID for operators with the admin key (README.md#live-streams)."""

from __future__ import annotations

import logging
import time

from flask import Flask, request
from kafka.errors import KafkaError

from emojistream.common import kafka_clients
from emojistream.common.auth import bearer_matches
from emojistream.common.events import DEFAULT_STREAM, InvalidEvent, check_stream_id
from emojistream.common.json_api import ApiError, json_body
from emojistream.common.streams import StreamCatalog, StreamWriter, UnknownStream
from emojistream.registration.balancer import Balancer
from emojistream.registration.settings import RegistrationSettings

log = logging.getLogger("registration_api")

# How long POST /streams waits for the new stream to be known (read back from Kafka).
STREAM_KNOWN_TIMEOUT_S = 5.0


def known_stream(body: dict, streams: StreamCatalog) -> str:
    """The stream a request body names (default main); ApiError 400 for a malformed one, 404
    for an unknown one."""
    try:
        stream_id = check_stream_id(body.get("stream_id", DEFAULT_STREAM))
    except InvalidEvent as err:
        raise ApiError(400, str(err)) from None
    try:
        return streams.require(stream_id)
    except UnknownStream as err:
        raise ApiError(404, str(err)) from None


def add_stream_routes(app: Flask, settings: RegistrationSettings, balancer: Balancer,
                       streams: StreamCatalog, admin_key: str) -> None:
    writer: list[StreamWriter] = []  # made on first use: reading needs no Kafka producer

    def admin_only() -> None:
        if not bearer_matches(request.headers.get("Authorization"), admin_key):
            refusals = app.extensions.get("refusals")
            if refusals is not None:
                refusals.refused("bad admin key (401)", request.remote_addr or "?")
            raise ApiError(401, "missing or wrong admin key (send Authorization: Bearer <key>; "
                                "the key is ADMIN_KEY, or VAR_DIR/secrets/admin.key)",
                           headers={"WWW-Authenticate": "Bearer"})

    def write(change) -> None:
        try:
            if not writer:
                writer.append(StreamWriter(settings))
            change(writer[0])
        except (KafkaError, kafka_clients.KafkaUnavailable) as err:
            raise ApiError(503, f"Kafka did not take the change ({err}); try again shortly",
                           headers={"Retry-After": "1"}) from None

    @app.get("/streams")
    def list_streams():
        return [{"stream_id": stream_id, **balancer.stream_stats(stream_id)}
                for stream_id in streams.all()]

    @app.post("/streams")
    def add_stream():
        admin_only()
        body = json_body()
        if not isinstance(body, dict):
            raise ApiError(400, 'body must be a JSON object like {"stream_id": "..."}')
        try:
            stream_id = check_stream_id(body.get("stream_id"))
        except InvalidEvent as err:
            raise ApiError(400, str(err)) from None
        if streams.known(stream_id):
            raise ApiError(409, f"stream {stream_id!r} exists already")
        if len(streams.all()) >= settings.streams_max:
            raise ApiError(409, f"there are {len(streams.all())} streams already, at most "
                                f"STREAMS_MAX={settings.streams_max}: remove one (DELETE "
                                "/streams/ID) or raise STREAMS_MAX")
        write(lambda w: w.add(stream_id))
        deadline = time.monotonic() + STREAM_KNOWN_TIMEOUT_S
        while not streams.known(stream_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("added stream %r", stream_id)
        return {"status": "success", "stream_id": stream_id}, 201

    @app.delete("/streams/<stream_id>")
    def remove_stream(stream_id: str):
        admin_only()
        if stream_id in streams.configured:
            raise ApiError(409, f"stream {stream_id!r} is one of STREAMS: change the setting "
                                "to remove it")
        if not streams.known(stream_id):
            raise ApiError(404, str(UnknownStream(stream_id)))
        write(lambda w: w.remove(stream_id))
        log.info("removed stream %r", stream_id)
        return {"status": "success", "stream_id": stream_id}
