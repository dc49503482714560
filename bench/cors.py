"""The ingest API's CORS, hand-written (today's) against flask-cors, in µs of CPU per POST /emoji
through the whole Flask app (WSGI, no HTTP server, a sink that keeps nothing), for a browser's
request (with an Origin header) and for any other client's (without).

The layout issue allowed flask-cors unless it cost the ingest path more than 3%. Trials alternate
the variants, so a machine whose speed changes slows both alike; each cell is the median of
--trials trials.

    .venv/bin/python -m bench.cors [--trials 15] [--requests 5000] [--results-dir bench/results]
"""

from __future__ import annotations

import io
import json
import sys
import time
from datetime import UTC, datetime

from flask import request
from flask_cors import CORS

from bench import harness
from bench.json_codec import HEADERS, summary, table_rows
from emojistream import config, topology
from emojistream.common.events import format_timestamp
from emojistream.common.json_api import ApiError
from emojistream.common.streams import StreamCatalog
from emojistream.ingest import app as ingest_app

ORIGIN = "http://localhost:5001"  # the registration API's page, allowed by default


class NoSink:
    def send(self, events, received_at=None):
        pass

    def problem(self):
        return None

    def pending(self):
        return 0, 0


def with_flask_cors(app, settings) -> None:
    """What _add_cors would be with flask-cors: its headers, and the same 403 for others."""
    origins = topology.cors_origins(settings, settings.api_cors_origins)
    CORS(app, origins=list(origins), methods=["GET", "POST", "OPTIONS"],
         allow_headers=["Content-Type"], expose_headers=["Retry-After"], max_age=600,
         always_send=False)

    @app.before_request
    def refuse_other_origins():
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in origins:
            raise ApiError(403, f"origin {origin} is not allowed (API_CORS_ORIGINS)")


def build(variant: str):
    settings = config.load({})
    hand_written = ingest_app._add_cors
    if variant == "flask-cors":
        ingest_app._add_cors = with_flask_cors
    try:
        return ingest_app.create_app(settings, sink=NoSink(), streams=StreamCatalog(settings))
    finally:
        ingest_app._add_cors = hand_written


def post_emoji(app, origin: str | None, requests: int) -> float:
    """µs of CPU per request."""
    body = json.dumps({"user_id": "u1", "emoji_type": "🔥",
                       "timestamp": format_timestamp(datetime.now(UTC))}).encode()
    headers = {"HTTP_ORIGIN": origin} if origin else {}

    def start_response(status, response_headers):
        assert status.startswith("200"), status

    started = time.process_time()
    for _ in range(requests):
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/emoji", "SERVER_NAME": "localhost",
                   "SERVER_PORT": "5000", "SERVER_PROTOCOL": "HTTP/1.1",
                   "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
                   "wsgi.input": io.BytesIO(body), "CONTENT_TYPE": "application/json",
                   "CONTENT_LENGTH": str(len(body)), **headers}
        for _chunk in app.wsgi_app(environ, start_response):
            pass
    return (time.process_time() - started) / requests * 1e6


def main(argv=None) -> None:
    parser = harness.parser("cors", __doc__)
    parser.add_argument("--trials", type=int, default=15, help="trials per cell (default 15)")
    parser.add_argument("--requests", type=int, default=5000,
                        help="requests per trial (default 5000)")
    args = parser.parse_args(argv)
    run = harness.Run("cors", args)
    apps = {variant: build(variant) for variant in ("flask-cors", "hand-written")}
    results: dict[str, dict[str, list]] = {}
    for trial in range(args.trials):
        for step, origin in (("POST /emoji from a browser (Origin)", ORIGIN),
                             ("POST /emoji from any other client", None)):
            variants = list(apps) if trial % 2 == 0 else list(apps)[::-1]
            for variant in variants:
                results.setdefault(step, {v: [] for v in apps})[variant].append(
                    post_emoji(apps[variant], origin, args.requests))
    steps = summary(results)
    title = "Ingest CORS: flask-cors against hand-written, µs of CPU per request"
    harness.print_table(title, HEADERS, table_rows(steps))
    run.save(title, {"steps": steps})


if __name__ == "__main__":
    main()
