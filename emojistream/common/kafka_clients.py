"""Kafka client setup in one place, so every component connects the same way."""

from __future__ import annotations

import logging
import time

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from kafka.structs import MemberState

from emojistream.common.settings import SharedSettings as Settings

DEFAULT_CONNECT_TIMEOUT_S = 10.0
# How long a consumer may stay rebalancing with a generation the coordinator has already given it
# before GroupWatch takes the rebalance for abandoned (a sound one completes in milliseconds).
REJOIN_STALL_S = 5.0


class KafkaUnavailable(RuntimeError):
    """Kafka could not be reached at the configured bootstrap servers."""


def bootstrap_servers(settings: Settings) -> list[str]:
    return [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()]


def security_options(settings: Settings) -> dict:
    """The kafka-python keyword arguments of the Kafka security settings (none for PLAINTEXT);
    the settings have checked that they fit together."""
    protocol = settings.kafka_security_protocol.upper()
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, object] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism.upper(),
                       sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=settings.kafka_sasl_password)
    if protocol.endswith("SSL"):
        options["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        for option, value in (("ssl_cafile", settings.kafka_ssl_cafile),
                              ("ssl_certfile", settings.kafka_ssl_certfile),
                              ("ssl_keyfile", settings.kafka_ssl_keyfile),
                              ("ssl_password", settings.kafka_ssl_key_password)):
            if value:
                options[option] = value
    return options


def client_options(settings: Settings, connect_timeout_s: float) -> dict:
    """What every kafka-python client gets: the bootstrap list and the security settings."""
    return {"bootstrap_servers": bootstrap_servers(settings),
            "bootstrap_timeout_ms": int(connect_timeout_s * 1000),
            **security_options(settings)}


def _connect(client_class, settings: Settings, connect_timeout_s: float, *args, **options):
    try:
        return client_class(*args, **client_options(settings, connect_timeout_s), **options)
    except KafkaError as err:
        raise KafkaUnavailable(
            f"Kafka is not reachable at {settings.kafka_bootstrap_servers} "
            f"({type(err).__name__}); is it running? (scripts/kafka.sh status)") from None


def admin_client(settings: Settings,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> KafkaAdminClient:
    return _connect(KafkaAdminClient, settings, connect_timeout_s)


def wait_for_kafka(settings: Settings,
                   connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
    """Return once Kafka answers; raise KafkaUnavailable otherwise."""
    admin_client(settings, connect_timeout_s).close()


class MissingTopic(KafkaUnavailable):
    """Topics a component needs do not exist (the broker creates none on demand)."""

    def __init__(self, settings: Settings, topics: list[str]):
        names = ", ".join(topics)
        subject = f"topic {names} does" if len(topics) == 1 else f"topics {names} do"
        super().__init__(f"{subject} not exist at {settings.kafka_bootstrap_servers}; "
                         "run scripts/create_topics.sh")


def require_topics(settings: Settings, topics: list[str],
                   client: KafkaConsumer | None = None) -> None:
    """MissingTopic unless every topic exists (KafkaUnavailable when Kafka does not answer).

    With a ``client``, its metadata is fetched afresh first, so that a consumer subscribed just
    before joins its group knowing the topics' partitions: see ``subscribe``. Without one, a
    consumer is opened for the check.
    """
    if client is None:
        client = consumer(settings)
        try:
            return require_topics(settings, topics, client)
        finally:
            client.close()
    try:
        client.topics()  # a metadata request, even when the topics are known already
        missing = [topic for topic in topics if not client.partitions_for_topic(topic)]
    except KafkaError as err:
        raise KafkaUnavailable(f"Kafka at {settings.kafka_bootstrap_servers} did not list its "
                               f"topics ({type(err).__name__})") from None
    if missing:
        raise MissingTopic(settings, missing)


def subscribe(settings: Settings, client: KafkaConsumer, topics: list[str],
              listener: ConsumerRebalanceListener, required: list[str] | None = None,
              log: logging.Logger | None = None) -> GroupWatch:
    """Subscribe a group's consumer to ``topics``, then check that ``required`` (default: the
    topics) exist (MissingTopic, KafkaUnavailable; the caller closes the consumer). The poll loop
    calls the returned watch's ``check()`` after each poll.

    Subscribe first, metadata second: kafka-python 3.0.12's consumer notes the partitions of its
    subscribed topics only when metadata arrives after the subscription. Checked the other way
    round, the group's first assignment was made on no partitions at all; the next metadata
    refresh (about 0.5 s later) then differed, and the consumer rebalanced, every time it
    started: a rebalance that could hang for good (GroupWatch).
    """
    client.subscribe(topics, listener=listener)
    require_topics(settings, required if required is not None else topics, client)
    return GroupWatch(client, topics, listener, log or logging.getLogger(__name__))


def delivery_options(settings: Settings, linger_ms: int,
                     delivery_timeout_s: float | None = None) -> dict:
    """The producer options of a delivery timeout (default KAFKA_DELIVERY_TIMEOUT_S): a request
    waits at most as long (and 30 s at most, kafka-python's default), as kafka-python
    requires."""
    delivery_ms = int((settings.kafka_delivery_timeout_s if delivery_timeout_s is None
                       else delivery_timeout_s) * 1000)
    return {"delivery_timeout_ms": delivery_ms,
            "request_timeout_ms": max(1, min(30_000, delivery_ms - linger_ms))}


def producer(settings: Settings, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
             **options) -> KafkaProducer:
    return _connect(KafkaProducer, settings, connect_timeout_s, **options)


def consumer(settings: Settings, *topics: str,
             connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, **options) -> KafkaConsumer:
    return _connect(KafkaConsumer, settings, connect_timeout_s, *topics, **options)


class ReadyLog(ConsumerRebalanceListener):
    """Logs each assignment of a consumer group's partitions (the first line starts "ready:")
    and sets the component's ready gauge. Runs on kafka-python's own loop, so it must not call
    the consumer."""

    def __init__(self, log: logging.Logger, topic: str, group: str, task: str, ready=None):
        self.log, self.topic, self.group, self.task = log, topic, group, task
        self.ready = ready

    def on_partitions_assigned(self, assigned):
        if self.ready is not None:
            self.ready.set(1)
        partitions = sorted(tp.partition for tp in assigned)
        owned = (f"owns partition(s) {partitions}" if partitions
                 else "no partition (another member has them)")
        self.log.info("ready: in group %s for %s, %s, %s", self.group, self.topic, owned,
                      self.task)

    def on_partitions_revoked(self, revoked):
        if revoked:
            self.log.info("partition(s) %s of %s revoked",
                          sorted(tp.partition for tp in revoked), self.topic)


class GroupWatch:
    """Rejoins the group when kafka-python abandoned a rebalance, which it does not notice itself.

    kafka-python 3.0.12 rebalances when the metadata of a subscribed topic changed, without
    noting that a rejoin is needed (the flag Kafka's Java client sets since KAFKA-9815). When the
    poll's time runs out while that JoinGroup/SyncGroup is in flight, the next poll no longer sees
    a reason to rejoin (the assignment was already made on the new metadata), so the completed
    join is never applied: the consumer has given up its partitions, sends no heartbeat, fetches
    nothing, and stays so for good. Its signature: rebalancing, with a generation that the
    coordinator gave it and that it never held stable. After REJOIN_STALL_S of that, check()
    leaves the group and subscribes again, which joins afresh.
    """

    def __init__(self, client: KafkaConsumer, topics: list[str],
                 listener: ConsumerRebalanceListener, log: logging.Logger,
                 stall_s: float = REJOIN_STALL_S, clock=time.monotonic):
        self.client, self.topics, self.listener, self.log = client, topics, listener, log
        self.stall_s, self.clock = stall_s, clock
        self.rejoins = 0
        self._stable_generation: int | None = None
        self._stalled: tuple[int, float] | None = None  # (generation, since)

    def check(self) -> bool:
        """True when it found the consumer's rebalance abandoned and subscribed again."""
        group = self.client.group_metadata()
        if group.state == MemberState.STABLE:
            self._stable_generation, self._stalled = group.generation_id, None
            return False
        if (group.state != MemberState.REBALANCING or group.generation_id < 0
                or group.generation_id == self._stable_generation):
            self._stalled = None  # not joined yet, or waiting for the coordinator
            return False
        now = self.clock()
        if self._stalled is None or self._stalled[0] != group.generation_id:
            self._stalled = (group.generation_id, now)
            return False
        if now - self._stalled[1] < self.stall_s:
            return False
        self.rejoins += 1
        self.log.warning("group %s: generation %d was never applied after %.0f s of "
                         "rebalancing; leaving the group and joining again", group.group_id,
                         group.generation_id, now - self._stalled[1])
        self._stalled = None
        self.client.unsubscribe()
        self.client.subscribe(self.topics, listener=self.listener)
        return True


# kafka-python has no public call for the two below; they are the project's only uses of its
# private attributes, and tests/test_kafka_clients.py fails loudly if an upgrade takes them away.

def force_close(producer: KafkaProducer) -> None:
    """Stop a producer at once, dropping what it has not delivered (close() flushes first, and
    raises again when Kafka does not answer)."""
    producer._sender.force_close()


def request_metadata(producer: KafkaProducer):
    """Have the producer's own thread fetch fresh metadata; a future of the cluster's metadata
    (add_callback). Public alternatives block without a timeout while Kafka is down."""
    return producer._metadata.request_update()
