"""HTTP ingest of emoji reactions: validates them and hands them to Kafka.

    POST /emoji    one event: {"user_id": "client_1", "emoji_type": "🔥",
                               "timestamp": "2026-11-27T07:15:56.123Z"}  ->  {"status": "success"}
    POST /emojis   a JSON array of events (at most API_MAX_BATCH); invalid ones are reported
                   by index, the valid ones are accepted
    GET  /health   200 while Kafka takes records, else 503
    GET  /metrics  Prometheus metrics, summed over the server's worker processes

An event names its live stream ("stream_id", default "main"); one for a stream that is not known
(STREAMS and those added through the registration API, emojistream/common/streams.py) is refused with
404, so that neither a typo nor an attacker grows the aggregator's state with made-up streams.

Browsers may call it from the pages of the origins in API_CORS_ORIGINS (default: the registration
API's own page; "*" for any):
preflight OPTIONS requests are answered, answers carry Access-Control-Allow-Origin, and a request
from a browser page of another origin is refused with 403.

Every failure is answered with JSON {"error": "..."}: 4xx for bad input, 503 while Kafka cannot
take records (so clients retry instead of losing events). Served by granian with threaded workers;
each worker has its own Kafka producer, created after the fork and flushed when the worker exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime

from flask import Flask, request

from emojistream import config
from emojistream.common import kafka_clients, metrics, wsgi
from emojistream.common.events import EventValidator, InvalidEvent
from emojistream.common.json_api import ApiError, add_json_error_handlers, json_body, json_error
from emojistream.common.logs import setup_logging
from emojistream.common.streams import StreamCatalog, UnknownStream
from emojistream.ingest import sink as ingest
from emojistream.ingest.sink import KafkaEventSink, SinkUnavailable

log = logging.getLogger("emoji_api")

ENDPOINTS = "POST /emoji, POST /emojis, GET /health and GET /metrics"
SINK = "emoji_sink"  # keys of the sink, the stream catalog and the metrics in app.extensions
STREAMS = "streams"
METRICS = "metrics"
# How often each worker copies its producer's buffer and errors into the metrics.
METRICS_SAMPLE_S = 1.0
RETRY_AFTER_S = "1"
# How long a new worker waits to learn the streams added at run time before it serves.
STREAMS_READ_TIMEOUT_S = 10.0


def create_app(settings: config.Settings | None = None, sink=None,
               streams: StreamCatalog | None = None) -> Flask:
    """The ingest app; ``sink`` (default: a KafkaEventSink for ``settings``) takes the events,
    ``streams`` (default: a catalog following the streams topic) says which streams exist."""
    settings = settings or config.load()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.api_max_body_bytes
    app.extensions[SINK] = sink if sink is not None else KafkaEventSink(settings)
    app.extensions[STREAMS] = streams if streams is not None else StreamCatalog(settings).start()
    app.extensions[METRICS] = metrics.IngestMetrics()
    _add_routes(app, settings)
    _add_metrics(app)
    _add_cors(app, settings)
    _add_error_handlers(app)
    return app


# --- CORS: which web pages may send reactions (the web page of the registration API) ----------

CORS_ALLOW_METHODS = "GET, POST, OPTIONS"
CORS_ALLOW_HEADERS = "Content-Type"
CORS_EXPOSE_HEADERS = "Retry-After"
CORS_MAX_AGE_S = "600"  # how long a browser may reuse a preflight answer


def _add_cors(app: Flask, settings: config.Settings) -> None:
    """Answer preflight requests and label answers for the origins of API_CORS_ORIGINS.

    A request without an Origin header (curl, the simulator, other servers) is not concerned.
    A browser request from an origin that is not allowed is refused with 403 before anything
    is sent to Kafka (a browser would hide the answer from the page anyway).
    """
    origins = settings.cors_origins
    any_origin = "*" in origins

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
            response.vary.add("Origin")
        return response


def _add_routes(app: Flask, settings: config.Settings) -> None:
    validator = EventValidator.from_settings(settings)
    sink = app.extensions[SINK]
    streams = app.extensions[STREAMS]

    refused = app.extensions[METRICS].refused

    def accept(item, received_at: datetime) -> dict:
        event = validator.validate(item, received_at)
        streams.require(event["stream_id"])
        return event

    @app.post("/emoji")
    def post_emoji():
        received_at = _now()
        try:
            event = accept(json_body(), received_at)
        except InvalidEvent:
            refused.labels("invalid").inc()
            raise
        except UnknownStream:
            refused.labels("unknown_stream").inc()
            raise
        _send(app, [event], received_at)
        return {"status": "success"}

    @app.post("/emojis")
    def post_emojis():
        items = json_body()
        _check_batch(items, settings.api_max_batch, refused)
        received_at = _now()
        accepted, rejected, unknown_streams = [], [], 0
        for index, item in enumerate(items):
            try:
                accepted.append(accept(item, received_at))
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


def _now() -> datetime:
    return datetime.now(UTC)


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

    @app.after_request
    def count(response):
        endpoint = request.url_rule.rule if request.url_rule is not None else "other"
        counters.requests.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.get(metrics.PATH)
    def serve_metrics():
        sample_sink(app)
        registry = (metrics.multiprocess_registry() if os.environ.get(metrics.MULTIPROC_ENV)
                    else counters.registry)
        body, content_type = metrics.exposition(registry)
        return body, 200, {"Content-Type": content_type}


def sample_sink(app: Flask) -> None:
    """Copy the sink's buffer and failures into the metrics (a sink without stats has none)."""
    stats = getattr(app.extensions[SINK], "stats", None)
    if stats is not None:
        app.extensions[METRICS].sample(stats())


def _sample_forever(app: Flask) -> None:
    """In each worker: its buffer in the metrics, also when another worker answers /metrics."""
    while True:
        time.sleep(METRICS_SAMPLE_S)
        sample_sink(app)


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


def close_sink(app: Flask) -> None:
    """As a worker ends: deliver what it accepted before it goes, stop following the streams."""
    app.extensions[SINK].close()
    app.extensions[STREAMS].stop()
    metrics.forget_process(os.getpid())


def worker_app(settings: config.Settings | None = None) -> Flask:
    """The app of one server worker, its producer connected before it serves (requests would
    otherwise be answered 503 while it connects). Runs in each worker after the fork, so every
    worker has its own producer. Settings default to the environment's."""
    metrics.use_multiprocess_values()
    app = create_app(settings or config.load())
    threading.Thread(target=_sample_forever, args=(app,), daemon=True,
                     name="metrics-sampler").start()
    problem = app.extensions[SINK].problem()
    if problem is not None:
        log.warning("worker %d starts without Kafka: %s", os.getpid(), problem)
    elif not app.extensions[STREAMS].wait_caught_up(STREAMS_READ_TIMEOUT_S):
        log.warning("worker %d starts before reading the streams topic: it knows STREAMS only "
                    "until it does", os.getpid())
    return app


def parse_args(argv, settings: config.Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="emoji_api.py",
        description="HTTP ingest of emoji reactions into Kafka (POST /emoji, POST /emojis, "
                    "GET /health). Options override API_HOST, API_PORT and API_WORKERS.")
    parser.add_argument("--host", default=settings.api_host,
                        help=f"address to listen on (default {settings.api_host})")
    parser.add_argument("--port", type=int, default=settings.api_port,
                        help=f"port to listen on (default {settings.api_port})")
    parser.add_argument("--workers", type=int, default=settings.api_workers,
                        help=f"worker processes, each with {settings.api_threads} threads "
                             f"(default {settings.api_workers})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    setup_logging("emoji_api")
    try:
        settings = config.load()
        args = parse_args(argv, settings)
        settings = dataclasses.replace(settings, api_host=args.host, api_port=args.port,
                                       api_workers=args.workers)
        ingest.compression_type(settings)
    except (config.ConfigError, ValueError) as err:
        log.error("%s", err)
        return 2
    try:
        kafka_clients.require_topics(settings, [settings.emoji_events_topic])
    except kafka_clients.KafkaUnavailable as err:  # MissingTopic included
        log.error("%s", err)
        return 1
    log.info("listening on %s:%d, %d worker(s) with %d threads, producing to %s",
             settings.api_host, settings.api_port, settings.api_workers, settings.api_threads,
             settings.emoji_events_topic)
    os.environ.update(config.to_environment(settings))  # the workers' settings
    try:
        # Checked before the metrics folder is emptied: it may be a running API's.
        wsgi.check_port_free(settings.api_host, settings.api_port)
        metrics.prepare_multiprocess_dir(
            settings.var_path / "metrics" / f"emoji_api-{settings.api_port}")
        wsgi.serve("emoji_api:worker_app", host=settings.api_host, port=settings.api_port,
                   workers=settings.api_workers, threads=settings.api_threads,
                   worker_exit="emoji_api:close_sink")
    except wsgi.PortInUse as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
