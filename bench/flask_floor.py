"""The floor of single POSTs (issue 22): a Flask app whose one route reads the body and answers
what POST /emoji answers, served like the ingest API (granian, API_WORKERS x API_THREADS), so
that bench/ingest.py --flask-floor can tell Flask's own cost per request from ours.

    .venv/bin/python bench/flask_floor.py    # on API_HOST:API_PORT, GET /health and POST /emoji
"""

from __future__ import annotations

from flask import Flask, request

from emojistream.common import wsgi
from emojistream.common.settings import load_from
from emojistream.ingest.settings import IngestSettings


def app() -> Flask:
    floor = Flask(__name__)

    @floor.post("/emoji")
    def emoji():
        request.get_data()
        return {"status": "success"}

    @floor.get("/health")
    def health():
        return {"status": "ok"}

    return floor


if __name__ == "__main__":
    settings = load_from(IngestSettings)
    wsgi.serve("bench.flask_floor:app", host=settings.api_host, port=settings.api_port,
               workers=settings.api_workers, threads=settings.api_threads)
