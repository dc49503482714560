"""POST /emoji's usual request is answered before Flask makes a request of it (issue 22): the
same answers, events and counts as through the Flask app, without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

from emojistream import config
from emojistream.common import metrics
from emojistream.common.events import format_timestamp
from emojistream.common.streams import StreamCatalog
from emojistream.ingest.app import create_app
from emojistream.ingest.metrics import IngestMetrics
from emojistream.ingest.sink import SinkUnavailable

EVENT = {"user_id": "u1", "emoji_type": "🔥"}
BODIES = [EVENT, {**EVENT, "stream_id": "nope"}, {**EVENT, "user_id": ""}, [EVENT],
          {**EVENT, "timestamp": "2000-01-01T00:00:00Z"}, "{not json", '"\\ud800"', ""]


class Sink:
    def __init__(self):
        self.events, self.down = [], False

    def send(self, events, received_at=None):
        if self.down:
            raise SinkUnavailable("no broker")
        self.events += [{**e, "timestamp": None} for e in events]

    def problem(self):
        return None


def body(item) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and "timestamp" not in item:
        item = {**item, "timestamp": format_timestamp(datetime.now(UTC))}
    return json.dumps(item)


def answers(settings, through_flask: bool, down: bool = False) -> tuple[list, list, list]:
    """Every body posted twice, with the plain path or only through the Flask app: (answers,
    events sent, the API's metric lines)."""
    counters, sink = IngestMetrics(), Sink()
    sink.down = down
    app = create_app(settings, sink=sink, streams=StreamCatalog(settings), counters=counters)
    wsgi = Flask.wsgi_app.__get__(app) if through_flask else app.wsgi_app
    found = []
    for item in BODIES * 2:
        environ = EnvironBuilder(path="/emoji", method="POST", data=body(item),
                                 environ_base={"REMOTE_ADDR": "203.0.113.7"}).get_environ()
        app_iter, status, headers = run_wsgi_app(wsgi, environ)
        found.append((status, sorted(headers.items()), b"".join(app_iter)))
    text = metrics.exposition(counters.registry)[0].decode()
    return found, sink.events, [line for line in text.splitlines() if line.startswith("emoji")]


@pytest.mark.parametrize("env", [{}, {"API_CORS_ORIGINS": "*"},
                                 {"API_EVENTS_BURST_PER_ADDRESS": "3",
                                  "API_EVENTS_PER_S_PER_ADDRESS": "0.001"}])
@pytest.mark.parametrize("down", [False, True])
def test_the_plain_path_answers_counts_and_sends_as_flask_does(env, down):
    settings = config.load({"STREAMS": "main", **env})
    plain = answers(settings, through_flask=False, down=down)
    assert plain == answers(settings, through_flask=True, down=down)
    assert any(status.startswith("200" if not down else "503") for status, _, _ in plain[0])
