"""The one private kafka-python call the project makes (kafka_clients.force_close), checked on
the pinned version without a broker: if an upgrade takes it away, this fails loudly."""

from __future__ import annotations

import threading
import time

from kafka import KafkaProducer

from emojistream.common.kafka_clients import force_close, request_metadata


def test_force_close_stops_the_producers_thread_at_once():
    before = set(threading.enumerate())
    # api_version given: no broker is asked anything while the producer is built.
    producer = KafkaProducer(bootstrap_servers="localhost:1", api_version=(2, 8, 0))
    started = [thread for thread in threading.enumerate() if thread not in before]
    assert started, "the producer runs a thread of its own"
    force_close(producer)
    for thread in started:
        thread.join(timeout=2)
        assert not thread.is_alive()
    closing = time.monotonic()
    producer.close(timeout=5)
    assert time.monotonic() - closing < 1


def test_request_metadata_gives_a_future_of_the_clusters_metadata():
    producer = KafkaProducer(bootstrap_servers="localhost:1", api_version=(2, 8, 0))
    try:
        future = request_metadata(producer)
        assert callable(future.add_callback) and not future.is_done
    finally:
        force_close(producer)
        producer.close(timeout=1)
