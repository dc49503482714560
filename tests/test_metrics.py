"""Every component's /metrics, without a JVM or a broker: the expected metric names, with exact
values after known actions."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

import emoji_api
from emojistream import config, metrics
from emojistream.events import format_timestamp
from emojistream.ingest import SinkUnavailable
from emojistream.streams import StreamCatalog
from testkit.processes import REPO_ROOT


def samples(text: str) -> dict:
    """{(name, ((label, value), ...)): value} of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


class FakeSink:
    """Takes events until told Kafka is gone; reports a fixed buffer."""

    def __init__(self):
        self.events, self.down = [], False
        self.pending = {"pending_events": 7, "pending_bytes": 700, "send_errors": 2,
                        "lost_events": 9}

    def send(self, events, received_at=None):
        if self.down:
            raise SinkUnavailable("no broker")
        self.events += events

    def problem(self):
        return None

    def stats(self):
        return dict(self.pending)

    def close(self):
        pass


def event(**fields) -> dict:
    return {"user_id": "u1", "emoji_type": "🔥",
            "timestamp": format_timestamp(datetime.now(UTC)), **fields}


@pytest.fixture
def ingest():
    settings = config.load({"STREAMS": "main"})
    sink = FakeSink()
    app = emoji_api.create_app(settings, sink=sink, streams=StreamCatalog(settings))
    return app.test_client(), sink


def test_ingest_counts_accepted_and_refused_events(ingest):
    client, sink = ingest
    batch = [event(), event(), event(), event(emoji_type="🦄")]
    assert client.post("/emojis", json=batch).status_code == 200
    assert client.post("/emoji", json=event(stream_id="other")).status_code == 404
    assert client.post("/emoji", json=event(user_id="")).status_code == 400
    sink.down = True
    assert client.post("/emojis", json=[event(), event()]).status_code == 503
    text = client.get("/metrics").text
    assert len(sink.events) == 3
    assert value(text, "emojistream_api_events_accepted_total") == 3
    assert value(text, "emojistream_api_events_refused_total", reason="invalid") == 2
    assert value(text, "emojistream_api_events_refused_total", reason="unknown_stream") == 1
    assert value(text, "emojistream_api_events_refused_total", reason="unavailable") == 2
    assert value(text, "emojistream_api_events_refused_total", reason="too_large") == 0
    assert value(text, "emojistream_api_requests_total", endpoint="/emojis", status="200") == 1
    assert value(text, "emojistream_api_requests_total", endpoint="/emojis", status="503") == 1
    assert value(text, "emojistream_api_requests_total", endpoint="/emoji", status="404") == 1
    assert value(text, "emojistream_api_requests_total", endpoint="/emoji", status="400") == 1


def test_ingest_reports_the_producer_buffer_and_its_errors(ingest):
    client, sink = ingest
    text = client.get("/metrics").text
    assert value(text, "emojistream_api_producer_buffer_bytes") == 700
    assert value(text, "emojistream_api_producer_buffer_events") == 7
    assert value(text, "emojistream_api_send_errors_total") == 2
    assert value(text, "emojistream_api_events_lost_total") == 9
    sink.pending.update(pending_bytes=0, pending_events=0, send_errors=3, lost_events=10)
    text = client.get("/metrics").text
    assert value(text, "emojistream_api_producer_buffer_bytes") == 0
    assert value(text, "emojistream_api_send_errors_total") == 3
    assert value(text, "emojistream_api_events_lost_total") == 10


WORKER = """
import sys
from emojistream import metrics
metrics.use_multiprocess_values()
counters = metrics.IngestMetrics()
counters.accepted.inc(int(sys.argv[1]))
counters.buffer_bytes.set(int(sys.argv[1]) * 10)
"""
READER = """
from emojistream import metrics
print(metrics.exposition(metrics.multiprocess_registry())[0].decode())
"""


def test_ingest_workers_are_summed_in_multiprocess_mode(tmp_path):
    """As granian's workers do: each process writes its own files; /metrics sums them."""
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}
    for count in ("3", "4"):
        subprocess.run([sys.executable, "-c", WORKER, count], env=env, check=True,
                       cwd=REPO_ROOT)
    text = subprocess.run([sys.executable, "-c", READER], env=env, check=True, text=True,
                          capture_output=True, cwd=REPO_ROOT).stdout
    assert value(text, "emojistream_api_events_accepted_total") == 7
    assert value(text, "emojistream_api_producer_buffer_bytes") == 70
