"""The ingest API's Flask app: validates reactions and hands them to Kafka (README.md#ingest-api).

Every failure is answered with JSON {"error": "..."}: 4xx for bad input, 503 while Kafka cannot
take events. The routes, their answers and errors: openapi.json beside this file, served at
GET /openapi.json. Browsers may call it from the pages of API_CORS_ORIGINS (docs/web.md#cors).
"""

from __future__ import annotations

import functools
import io
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import orjson
from flask import Flask, request
from prometheus_client import Counter

from emojistream import topology
from emojistream.common import metrics, secrets
from emojistream.common.events import EventValidator, InvalidEvent
from emojistream.common.json_api import (
    ApiError,
    add_json_error_handlers,
    add_openapi_route,
    json_body,
    json_error,
)
from emojistream.common.streams import StreamCatalog, UnknownStream
from emojistream.ingest.clients import ClientLimits
from emojistream.ingest.metrics import IngestMetrics
from emojistream.ingest.settings import IngestSettings
from emojistream.ingest.sink import KafkaEventSink, SinkUnavailable

log = logging.getLogger("emoji_api")

ENDPOINTS = "POST /emoji, POST /emojis, GET /health, GET /metrics and GET /openapi.json"
SINK = "emoji_sink"  # keys of the sink, the stream catalog and the metrics in app.extensions
STREAMS = "streams"
METRICS = "metrics"
RETRY_AFTER_S = "1"
CORS_ALLOW_METHODS = "GET, POST, OPTIONS"
CORS_ALLOW_HEADERS = "Content-Type, Authorization"
CORS_EXPOSE_HEADERS = "Retry-After"
CORS_MAX_AGE_S = "600"  # how long a browser may reuse a preflight answer
OPENAPI_DOCUMENT = Path(__file__).with_name("openapi.json")
# POST /emoji's answer, encoded once: what Flask's JSON answer of {"status": "success"} is.
SUCCESS = b'{"status":"success"}\n'
JSON_TYPE = "application/json"
# In a request's WSGI environ: its events were charged to the client's limits already.
CHARGED = "emojistream.charged"


def create_app(settings: IngestSettings, sink=None, streams: StreamCatalog | None = None,
               counters: IngestMetrics | None = None, token_secret: str | None = None) -> Flask:
    """The ingest app; ``sink`` (default: a KafkaEventSink) takes the events, ``streams``
    (default: a catalog following the streams topic) says which streams exist, ``counters``
    (default: new ones, shared with the default sink) count what happens; with
    API_REQUIRE_TOKEN, ``token_secret`` (default: the installation's) checks viewer tokens."""
    counters = counters if counters is not None else IngestMetrics()
    if settings.api_require_token and token_secret is None:
        token_secret = secrets.all_secrets(settings)[secrets.TOKEN_SECRET]
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.api_max_body_bytes
    app.extensions[METRICS] = counters
    app.extensions[SINK] = sink if sink is not None else KafkaEventSink(settings, counters=counters)
    app.extensions[STREAMS] = streams if streams is not None else StreamCatalog(settings).start()
    _add_routes(app, settings, ClientLimits(settings, token_secret))
    _add_metrics(app)
    add_openapi_route(app, OPENAPI_DOCUMENT, lambda doc: _document_settings(doc, settings))
    _add_cors(app, settings)
    _add_error_handlers(app)
    return app


def _document_settings(document: dict, settings: IngestSettings) -> None:
    """The OpenAPI document with the configured emojis and batch limit; with API_REQUIRE_TOKEN,
    the token required and the body's user_id ignored."""
    event = document["components"]["schemas"]["Event"]
    event["properties"]["emoji_type"]["enum"] = list(settings.allowed_emojis)
    batch = document["paths"]["/emojis"]["post"]["requestBody"]["content"]["application/json"]
    batch["schema"]["maxItems"] = settings.api_max_batch
    if settings.api_require_token:
        event["required"] = [name for name in event["required"] if name != "user_id"]
        event["properties"]["user_id"] = {
            "description": "Ignored (API_REQUIRE_TOKEN): the token's client id is the user id"}
        for path in ("/emoji", "/emojis"):
            document["paths"][path]["post"]["security"] = [{"viewerToken": []}]


def _add_cors(app: Flask, settings: IngestSettings) -> None:
    """Answer preflight requests and label answers for the origins of API_CORS_ORIGINS; refuse
    a browser request from another origin with 403 before anything reaches Kafka (a browser
    would hide the answer from the page anyway). A request without an Origin header (curl, the
    simulator, servers) is not concerned. Written here rather than with flask-cors, which cost a
    browser's request 13% more (bench/cors.py, docs/benchmarks.md)."""
    origins = topology.cors_origins(settings, settings.api_cors_origins)
    any_origin = _any_origin(settings)

    def allowed(origin: str) -> bool:
        return any_origin or origin.rstrip("/") in origins

    @app.before_request
    def check_origin():
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        if not allowed(origin):
            raise ApiError(403, f"origin {origin} is not allowed (API_CORS_ORIGINS)")
        if (request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
                and request.url_rule is not None):
            response = app.make_response(("", 204))
            response.headers["Access-Control-Allow-Methods"] = CORS_ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE_S
            return response
        return None

    @app.after_request
    def label(response):
        origin = request.headers.get("Origin")
        if origin is not None and allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = "*" if any_origin else origin
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
        if not any_origin:
            _vary_on_origin(response)
        return response


def _any_origin(settings: IngestSettings) -> bool:
    return "*" in topology.cors_origins(settings, settings.api_cors_origins)


def _vary_on_origin(response) -> None:
    """Vary: Origin on ``response``, set directly when it has no Vary yet (most answers):
    parsing the absent header into a set cost more than the rest of the request's CORS work."""
    if "Vary" in response.headers:
        response.vary.add("Origin")
    else:
        response.headers["Vary"] = "Origin"


def _add_routes(app: Flask, settings: IngestSettings, limits: ClientLimits) -> None:
    validator = EventValidator.from_settings(settings)
    sink = app.extensions[SINK]
    streams = app.extensions[STREAMS]
    refused = app.extensions[METRICS].refused

    def accept(item, received_at: datetime, viewer: str | None) -> dict:
        if viewer is not None and isinstance(item, dict):
            item = {**item, "user_id": viewer}  # the token's, whatever the body says
        event = validator.validate(item, received_at)
        streams.require(event["stream_id"])
        return event

    def identify() -> str | None:
        """The viewer of the request's token (API_REQUIRE_TOKEN: 401 without one), first."""
        try:
            return limits.viewer()
        except ApiError:
            refused.labels("unauthorized").inc()
            raise

    def charge(events: int, viewer: str | None) -> None:
        """``events`` taken from the address's bucket and the viewer's; counted if refused."""
        if request.environ.get(CHARGED):
            return
        try:
            limits.charge(events, viewer, request.remote_addr)
        except ApiError as err:
            refused.labels("too_large" if err.status == 413 else "rate_limited").inc(events)
            raise

    @app.post("/emoji")
    def post_emoji():
        viewer = identify()
        charge(1, viewer)
        received_at = datetime.now(UTC)
        try:
            event = accept(json_body(), received_at, viewer)
        except InvalidEvent:
            refused.labels("invalid").inc()
            raise
        except UnknownStream:
            refused.labels("unknown_stream").inc()
            raise
        _send(app, [event], received_at)
        return app.response_class(SUCCESS, mimetype=JSON_TYPE)

    @app.post("/emojis")
    def post_emojis():
        viewer = identify()
        items = json_body()
        _check_batch(items, settings.api_max_batch, refused)
        charge(len(items), viewer)
        received_at = datetime.now(UTC)
        accepted, rejected, unknown_streams = [], [], 0
        for index, item in enumerate(items):
            try:
                accepted.append(accept(item, received_at, viewer))
            except InvalidEvent as err:
                rejected.append({"index": index, "error": str(err)})
            except UnknownStream as err:
                rejected.append({"index": index, "error": str(err)})
                unknown_streams += 1
        body = {"status": "success", "accepted": len(accepted), "rejected": rejected}
        refused.labels("unknown_stream").inc(unknown_streams)
        refused.labels("invalid").inc(len(rejected) - unknown_streams)
        if not accepted:
            status = 404 if unknown_streams == len(items) else 400
            raise ApiError(status, f"none of the {len(items)} events is valid",
                           {**body, "status": "error"})
        _send(app, accepted, received_at)
        return body

    @app.get("/health")
    def health():
        problem = sink.problem()
        if problem is not None:
            raise _unavailable(problem)
        return {"status": "ok"}

    if not settings.api_require_token:
        _serve_plain_single_posts(app, accept, limits, vary=not _any_origin(settings))


def _serve_plain_single_posts(app: Flask, accept, limits: ClientLimits, vary: bool) -> None:
    """Answer the usual POST /emoji before Flask makes a request of it: Flask's request context,
    routing and hooks cost more than all the API does with the event (docs/benchmarks.md, issue
    22). Usual: no Origin header (a browser's request goes through the CORS checks), a body of
    Content-Length bytes within MAX_CONTENT_LENGTH holding one valid event of a known stream,
    within the client address's limit, that the sink takes. Anything else goes to the Flask app
    with the body read here, and is answered and counted there as before (the events of a
    request the sink refused are not charged twice)."""
    flask_app = app.wsgi_app
    counters = app.extensions[METRICS]
    sink = app.extensions[SINK]
    answered = counters.requests.labels("/emoji", "200")
    headers = [("Content-Type", JSON_TYPE), ("Content-Length", str(len(SUCCESS)))]
    if vary:
        headers.append(("Vary", "Origin"))

    def wsgi_app(environ, start_response):
        length = environ.get("CONTENT_LENGTH", "")
        if (environ.get("PATH_INFO") != "/emoji" or environ.get("REQUEST_METHOD") != "POST"
                or "HTTP_ORIGIN" in environ or "HTTP_TRANSFER_ENCODING" in environ
                or not (length.isascii() and length.isdigit())
                or int(length) > app.config["MAX_CONTENT_LENGTH"]):
            return flask_app(environ, start_response)
        body = environ["wsgi.input"].read(int(length))
        environ["wsgi.input"] = io.BytesIO(body)  # for Flask, should it answer after all
        received_at = datetime.now(UTC)
        try:
            event = accept(orjson.loads(body), received_at, None)
            limits.charge(1, None, environ.get("REMOTE_ADDR"))
            environ[CHARGED] = True
            sink.send([event], received_at.timestamp())
        except Exception:  # not JSON, invalid, refused, Kafka away...: Flask answers as before
            return flask_app(environ, start_response)
        counters.accepted.inc()
        answered.inc()
        start_response("200 OK", headers)
        return [SUCCESS]

    # Flask's documented way to wrap its WSGI app:
    app.wsgi_app = wsgi_app  # type: ignore[method-assign]


def _check_batch(items, max_batch: int, refused) -> None:
    if not isinstance(items, list):
        raise ApiError(400, "body must be a JSON array of events")
    if not items:
        raise ApiError(400, "empty batch")
    if len(items) > max_batch:
        refused.labels("too_large").inc(len(items))
        raise ApiError(413, f"batch has {len(items)} events; at most {max_batch} are allowed")


def _send(app: Flask, events: list[dict], received_at: datetime) -> None:
    counters = app.extensions[METRICS]
    try:
        app.extensions[SINK].send(events, received_at.timestamp())
    except SinkUnavailable as err:
        counters.refused.labels("unavailable").inc(len(events))
        raise _unavailable(str(err)) from None
    counters.accepted.inc(len(events))


def _add_metrics(app: Flask) -> None:
    """GET /metrics, and every answer counted by endpoint and status."""
    counters = app.extensions[METRICS]

    @functools.cache
    def answered(endpoint: str, status: int) -> Counter:
        """The requests counter of an endpoint and status, looked up once (both are few)."""
        return counters.requests.labels(endpoint, str(status))

    @app.after_request
    def count(response):
        rule = request.url_rule
        answered(rule.rule if rule is not None else "other", response.status_code).inc()
        return response

    @app.get(metrics.PATH)
    def serve_metrics():
        sample_buffer(app)
        registry = (metrics.multiprocess_registry() if os.environ.get(metrics.MULTIPROC_ENV)
                    else counters.registry)
        body, content_type = metrics.exposition(registry)
        return body, 200, {"Content-Type": content_type}


def sample_buffer(app: Flask) -> None:
    """The events and bytes waiting for Kafka into the metrics' gauges."""
    events, size = app.extensions[SINK].pending()
    app.extensions[METRICS].set_buffer(events, size)


def _unavailable(reason: str) -> ApiError:
    return ApiError(503, f"Kafka is unavailable ({reason}); try again shortly",
                    headers={"Retry-After": RETRY_AFTER_S})


def _add_error_handlers(app: Flask) -> None:
    @app.errorhandler(InvalidEvent)
    def invalid_event(err: InvalidEvent):
        return json_error(400, str(err))

    @app.errorhandler(UnknownStream)
    def unknown_stream(err: UnknownStream):
        return json_error(404, str(err))

    add_json_error_handlers(app, log, ENDPOINTS)
