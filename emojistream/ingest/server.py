"""emoji_api.py: the ingest API served by granian, one Kafka producer per worker process."""

from __future__ import annotations

import logging
import os
import threading
import time

from flask import Flask

from emojistream.common import kafka_clients, metrics, wsgi
from emojistream.common.lifecycle import server_settings
from emojistream.common.logs import setup_logging
from emojistream.common.settings import load_from, to_environment
from emojistream.ingest import records
from emojistream.ingest.app import SINK, STREAMS, create_app, sample_buffer
from emojistream.ingest.settings import IngestSettings

log = logging.getLogger("emoji_api")

# How often each worker copies its producer's buffer into the metrics.
METRICS_SAMPLE_S = 1.0
# How long a new worker waits to learn the streams added at run time before it serves.
STREAMS_READ_TIMEOUT_S = 10.0
OPTIONS = {"host": "api_host", "port": "api_port", "workers": "api_workers"}


def worker_app(settings: IngestSettings | None = None) -> Flask:
    """The app of one server worker (after the fork: every worker has its own producer), its
    producer connected before it serves (requests would otherwise be answered 503 while it
    connects). Settings default to the environment's, which the main process handed down."""
    metrics.use_multiprocess_values()
    app = create_app(settings if settings is not None else load_from(IngestSettings))
    threading.Thread(target=_sample_forever, args=(app,), daemon=True,
                     name="metrics-sampler").start()
    problem = app.extensions[SINK].problem()
    if problem is not None:
        log.warning("worker %d starts without Kafka: %s", os.getpid(), problem)
    elif not app.extensions[STREAMS].wait_caught_up(STREAMS_READ_TIMEOUT_S):
        log.warning("worker %d starts before reading the streams topic: it knows STREAMS only "
                    "until it does", os.getpid())
    return app


def _sample_forever(app: Flask) -> None:
    """In each worker: its buffer in the metrics, also when another worker answers /metrics."""
    while True:
        time.sleep(METRICS_SAMPLE_S)
        sample_buffer(app)


def close_worker(app: Flask) -> None:
    """As a worker ends: deliver what it accepted before it goes, stop following the streams."""
    app.extensions[SINK].close()
    app.extensions[STREAMS].stop()
    metrics.forget_process(os.getpid())


def main(argv=None) -> int:
    setup_logging("emoji_api")
    settings = server_settings(
        log, IngestSettings, argv, "emoji_api.py",
        "HTTP ingest of emoji reactions into Kafka (POST /emoji, POST /emojis, GET /health, "
        "GET /metrics).", **OPTIONS)
    try:
        records.compression_type(settings)
        kafka_clients.require_topics(settings, [settings.emoji_events_topic])
    except ValueError as err:
        log.error("%s", err)
        return 2
    except kafka_clients.KafkaUnavailable as err:  # MissingTopic included
        log.error("%s", err)
        return 1
    log.info("listening on %s:%d, %d worker(s) with %d threads, producing to %s",
             settings.api_host, settings.api_port, settings.api_workers, settings.api_threads,
             settings.emoji_events_topic)
    os.environ.update(to_environment(settings))  # the workers' settings
    try:
        # Checked before the metrics folder is emptied: it may be a running API's.
        wsgi.check_port_free(settings.api_host, settings.api_port)
        metrics.prepare_multiprocess_dir(
            settings.var_path / "metrics" / f"emoji_api-{settings.api_port}")
        wsgi.serve("emojistream.ingest.server:worker_app", host=settings.api_host,
                   port=settings.api_port, workers=settings.api_workers,
                   threads=settings.api_threads,
                   worker_exit="emojistream.ingest.server:close_worker")
    except wsgi.PortInUse as err:
        log.error("%s", err)
        return 1
    return 0
