"""A WebSocket server's HTTP, answered before the WebSocket handshake (websockets'
process_request): GET /health, GET /metrics, the subscriber key at /publish (on the publish
listener only), the limit of viewers per address."""

from __future__ import annotations

import http
import json
import logging
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from emojistream.common import metrics
from emojistream.common.auth import bearer_matches
from emojistream.delivery.connections import address_of, peer
from emojistream.delivery.hub import PUBLISH_PATH, VIEWER_PATH, Hub, presence_of, since_of

log = logging.getLogger("ws_server")

HEALTH_PATH = "/health"
METRICS_PATH = metrics.PATH


def process_request(hub: Hub, connection: ServerConnection, request: Request,
                    publish: bool = False) -> Response | None:
    """The answer to a request that is not a WebSocket handshake to go ahead with, else None.
    ``publish``: the request came to the publish listener (subscribers only), else to the
    viewers' listener (never subscribers)."""
    path = urlsplit(request.path).path
    if path in (HEALTH_PATH, METRICS_PATH):
        if request.method != "GET":
            response = connection.respond(http.HTTPStatus.METHOD_NOT_ALLOWED,
                                          f"{request.method} is not allowed on {path}; use GET\n")
            response.headers["Allow"] = "GET"
            return response
        if path == HEALTH_PATH:
            return _answer(connection, json.dumps(hub.health()) + "\n", "application/json")
        body, content_type = metrics.exposition(hub.metrics.registry)
        return _answer(connection, body.decode("utf-8"), content_type)
    if publish:
        return _publish_request(hub, connection, request, path)
    if path == PUBLISH_PATH:
        hub.refusals.refused("publish on the viewers' port", peer(connection))
        return connection.respond(http.HTTPStatus.FORBIDDEN,
                                  f"{PUBLISH_PATH} is not served on the viewers' port: "
                                  "subscribers publish on the server's publish listener "
                                  "(WS_PUBLISH_HOST, WS_PUBLISH_FIRST_PORT)\n")
    if path not in (VIEWER_PATH, PUBLISH_PATH):
        return connection.respond(http.HTTPStatus.NOT_FOUND,
                                  f"no such endpoint: {path} (viewers connect to "
                                  f"{VIEWER_PATH}, subscribers to {PUBLISH_PATH})\n")
    try:
        since_of(request.path)
        presence_of(request.path)
    except ValueError as err:
        hub.refusals.refused("malformed since or presence", peer(connection))
        response = connection.respond(http.HTTPStatus.BAD_REQUEST,
                                      json.dumps({"error": str(err)}) + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response
    if path == VIEWER_PATH and hub.too_many(connection):
        return connection.respond(http.HTTPStatus.TOO_MANY_REQUESTS,
                                  f"too many connections from {address_of(connection)}: at "
                                  f"most {hub.connections.max_per_address} "
                                  "(WS_MAX_CONNECTIONS_PER_ADDRESS)\n")
    return None


def _publish_request(hub: Hub, connection: ServerConnection, request: Request,
                     path: str) -> Response | None:
    if path != PUBLISH_PATH:
        return connection.respond(http.HTTPStatus.NOT_FOUND,
                                  f"no such endpoint on the publish listener: {path} "
                                  f"(subscribers connect to {PUBLISH_PATH}; viewers to the "
                                  "viewers' port)\n")
    if not bearer_matches(request.headers.get("Authorization"), hub.subscriber_key):
        hub.refusals.refused("bad subscriber key", peer(connection))
        return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                  "missing or wrong subscriber key "
                                  "(send Authorization: Bearer <key>)\n")
    return None


def _answer(connection: ServerConnection, body: str, content_type: str) -> Response:
    response = connection.respond(http.HTTPStatus.OK, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    return response
