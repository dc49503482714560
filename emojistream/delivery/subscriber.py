"""subscriber.py --cluster N --id K: hands the cluster's window updates from Kafka to its
WebSocket server.

Each subscriber consumes clusterN-topic-subscribers in a consumer group of its own and forwards
every update; the WebSocket server drops the second copy, so either may die without a gap.
Offsets are committed only for updates the server confirmed it read (a ping after the batch),
so a restarted subscriber resumes where it stopped. Why and how: docs/delivery.md.
"""

from __future__ import annotations

import argparse
import logging
import threading

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from emojistream import topology
from emojistream.common import kafka_clients, metrics, secrets
from emojistream.common.backoff import Backoff
from emojistream.common.events import InvalidEvent, decode_window_update
from emojistream.common.lifecycle import add_cluster_option, load_settings, stop_on_signals
from emojistream.common.logs import setup_logging
from emojistream.delivery.settings import DeliverySettings

log = logging.getLogger("subscriber")

POLL_TIMEOUT_MS = 500
COMMIT_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 2.0
ACK_TIMEOUT_S = 5.0
RETRY_INITIAL_S = 0.1


class KeyRejected(RuntimeError):
    """The WebSocket server refused the subscriber key: retrying cannot help."""


class HandOverFailed(RuntimeError):
    """The WebSocket server did not confirm it received the updates sent."""


class Outlet:
    """How to reach the cluster's WebSocket server's /publish endpoint (its publish listener)."""

    def __init__(self, url: str, key: str, settings: DeliverySettings):
        self.url = url
        self._headers = {"Authorization": f"Bearer {key}"}
        self._keepalive = settings.ws_keepalive()

    def connect(self) -> ClientConnection:
        """A new connection, to be used as a context manager. Raises KeyRejected when the
        server refuses the key, OSError, WebSocketException or TimeoutError otherwise."""
        try:
            return connect(self.url, additional_headers=self._headers,
                           open_timeout=CONNECT_TIMEOUT_S, close_timeout=CLOSE_TIMEOUT_S,
                           **self._keepalive)
        except InvalidStatus as err:
            if err.response.status_code == 401:
                raise KeyRejected(f"{self.url} refused the subscriber key (HTTP 401); "
                                  "SUBSCRIBER_KEY (or VAR_DIR/secrets/subscriber.key) must be "
                                  "the WebSocket server's") from None
            raise


def deliver(connection: ClientConnection, texts: list[str]) -> None:
    """Send ``texts`` in order and return once the server has read them all (a pong answers
    a ping only after the frames before it); HandOverFailed otherwise."""
    for text in texts:
        connection.send(text)
    pong = connection.ping(ack_on_close=True)
    if not (pong.wait(ACK_TIMEOUT_S) and connection.state is State.OPEN):
        raise HandOverFailed(f"{len(texts)} update(s) not confirmed: connection lost or no "
                             f"answer within {ACK_TIMEOUT_S:.0f} s")


class Subscriber:
    """Polls a batch, hands its valid updates over, commits; repeats until stopped."""

    def __init__(self, consumer: KafkaConsumer, outlet: Outlet, stop: threading.Event,
                 backoff: Backoff, counters: metrics.RelayMetrics | None = None,
                 group: kafka_clients.GroupWatch | None = None):
        self.consumer = consumer
        self.group = group
        self.outlet = outlet
        self.stop = stop
        self.backoff = backoff
        self.metrics = counters if counters is not None else metrics.RelayMetrics("subscriber")
        self._positions_logged: set[TopicPartition] = set()

    def run(self) -> None:
        """Connect and forward until stopped, reconnecting with backoff after failures.
        Raises KeyRejected."""
        while not self.stop.is_set():
            try:
                with self.outlet.connect() as connection:
                    log.info("connected to %s", self.outlet.url)
                    self.backoff.reset()
                    self._forward_while_open(connection)
            except (HandOverFailed, OSError, WebSocketException, TimeoutError) as err:
                self.metrics.retried.inc()
                delay = self.backoff.next_delay()
                log.warning("no connection to %s (%s); retrying in %.1f s (attempt %d)",
                            self.outlet.url, describe(err), delay, self.backoff.attempts)
                self.stop.wait(delay)

    def _forward_while_open(self, connection: ClientConnection) -> None:
        """Poll and hand over until stopped; HandOverFailed (or the connection's error) when
        the server is gone. Nothing is polled without a connection to hand it to."""
        while not self.stop.is_set():
            if connection.state is not State.OPEN:
                raise HandOverFailed("the server closed the connection")
            batches = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            if self.group is not None:
                self.group.check()
            self.metrics.observe_lag(self.consumer)
            self._log_new_partitions(batches)
            self._forward(connection, batches)

    def _log_new_partitions(self, batches: dict) -> None:
        """Log where each newly owned partition starts: the first record polled, else the
        position (the last commit, or the end of the partition for a new group)."""
        owned = self.consumer.assignment()
        self._positions_logged &= owned
        for tp in sorted(owned - self._positions_logged):
            start = batches[tp][0].offset if tp in batches else self._position(tp)
            if start is not None:  # else known after a later poll
                log.info("owns %s partition %d from offset %d", tp.topic, tp.partition, start)
                self._positions_logged.add(tp)

    def _position(self, tp: TopicPartition) -> int | None:
        try:
            return self.consumer.position(tp, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError:
            return None

    def _forward(self, connection: ClientConnection, batches: dict) -> None:
        """Hand over each partition's records. Whatever goes wrong, the partitions not handed
        over are rewound to their first record, so the next poll returns them again."""
        pending = list(batches.items())
        try:
            while pending:
                self._hand_over(connection, *pending[0])
                pending.pop(0)
        finally:
            for tp, records in pending:
                self._rewind(tp, records[0].offset)

    def _rewind(self, tp: TopicPartition, offset: int) -> None:
        try:
            self.consumer.seek(tp, offset)
        except KafkaError as err:  # no longer ours (a rebalance): resumed from the last commit
            log.info("not rewinding %s[%d] (%s)", tp.topic, tp.partition, describe(err))

    def _hand_over(self, connection: ClientConnection, tp: TopicPartition, records: list) -> None:
        texts = [text for text in map(self._update_text, records) if text is not None]
        if texts:
            deliver(connection, texts)
        self.metrics.forwarded.inc(len(texts))
        self._commit(tp, records[-1].offset + 1)

    def _update_text(self, record) -> str | None:
        """The record's value as text when it is a window update, else None (logged)."""
        try:
            decode_window_update(record.value)
            return record.value.decode("utf-8")
        except (InvalidEvent, UnicodeDecodeError) as err:
            self.metrics.skipped.inc()
            log.warning("skipping record at %s[%d]@%d: %s (%d skipped so far)", record.topic,
                        record.partition, record.offset, err, self.metrics.skipped_count())
            return None

    def _commit(self, tp: TopicPartition, offset: int) -> None:
        try:
            self.consumer.commit({tp: OffsetAndMetadata(offset, "", -1)},
                                 timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as err:
            # Sent again after a restart (from the last commit); the WebSocket server drops
            # the repeats.
            log.warning("could not commit %s[%d]@%d (%s)", tp.topic, tp.partition, offset,
                        type(err).__name__)


def describe(err: Exception) -> str:
    return str(err) or type(err).__name__


def open_consumer(settings: DeliverySettings, cluster: int, member: int,
                  ready=None) -> tuple[KafkaConsumer, kafka_clients.GroupWatch]:
    """This subscriber's consumer, in its own group, subscribed (``ready`` is set once it has
    joined), and the watch of its group (Subscriber's ``group``); KafkaUnavailable (or its
    MissingTopic) when Kafka or the topic is not there."""
    topic = settings.subscribers_topic(cluster)
    group = settings.subscriber_group(cluster, member)
    consumer = kafka_clients.consumer(
        settings, group_id=group, client_id=group, enable_auto_commit=False,
        auto_offset_reset="latest", allow_auto_create_topics=False,
        session_timeout_ms=settings.subscriber_session_timeout_ms,
        heartbeat_interval_ms=settings.subscriber_heartbeat_ms)
    listener = kafka_clients.ReadyLog(
        log, topic, group, f"handing over to {topology.ws_publish_url(settings, cluster)}",
        ready)
    try:
        watch = kafka_clients.subscribe(settings, consumer, [topic], listener, log=log)
    except kafka_clients.KafkaUnavailable:
        consumer.close()
        raise
    return consumer, watch


def parse_args(argv, settings: DeliverySettings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="subscriber.py",
        description="Hands cluster N's window updates (SUBSCRIBERS_TOPIC_TEMPLATE) to the "
                    "cluster's WebSocket server at its publish listener (WS_PUBLISH_HOST, port "
                    "WS_PUBLISH_FIRST_PORT + N - 1). Run two per "
                    "cluster: each consumes in its own group and forwards everything; the "
                    "server drops the second copy, so either may fail without a gap.")
    add_cluster_option(parser, settings)
    parser.add_argument("--id", type=int, required=True, metavar="K", dest="member",
                        help="this subscriber's number within the cluster (names its "
                             "consumer group, SUBSCRIBER_GROUP_TEMPLATE)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    setup_logging("subscriber")
    settings = load_settings(log, DeliverySettings)
    args = parse_args(argv, settings)
    stop = stop_on_signals()
    counters = metrics.RelayMetrics(prefix="subscriber")
    try:
        _, key = secrets.token_secret_and_subscriber_key(settings)
        consumer, group = open_consumer(settings, args.cluster, args.member, counters.ready)
    except (OSError, secrets.SecretError, kafka_clients.KafkaUnavailable) as err:
        log.error("%s", err)
        return 1
    outlet = Outlet(topology.ws_publish_url(settings, args.cluster), key, settings)
    subscriber = Subscriber(consumer, outlet, stop,
                            Backoff(RETRY_INITIAL_S, settings.subscriber_retry_max_s), counters,
                            group)
    metrics.serve(subscriber.metrics.registry, settings.metrics_host,
                  topology.subscriber_metrics_port(settings, args.cluster, args.member), log.name)
    log.info("cluster %d subscriber %d: %s -> %s", args.cluster, args.member,
             settings.subscribers_topic(args.cluster), outlet.url)
    try:
        subscriber.run()
    except KeyRejected as err:
        log.error("%s", err)
        return 1
    finally:
        consumer.close()
    handed_over, skipped, _ = subscriber.metrics.totals()
    log.info("stopped: %d update(s) handed over, %d record(s) skipped", handed_over, skipped)
    return 0

