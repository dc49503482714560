"""Create the system's topics idempotently (used by scripts/create_topics.sh)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass

from kafka.admin import ConfigResource
from kafka.errors import KafkaError

from emojistream import topology
from emojistream.common.kafka_clients import KafkaUnavailable, admin_client
from emojistream.common.logs import setup_logging
from emojistream.common.settings import ConfigError, SharedSettings, load_from

TOPIC_ALREADY_EXISTS = 36
MIN_INSYNC = "min.insync.replicas"
# How long to wait for the cluster to have as many brokers as a topic has replicas.
BROKERS_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    # min.insync.replicas, or None for the broker's default.
    min_insync_replicas: int | None = None
    # A topic that keeps the last record of each key (the streams catalog).
    compacted: bool = False
    # More topic configs (name, value), set at creation and on an existing topic.
    configs: tuple[tuple[str, str], ...] = ()


def aggregated_configs(settings: SharedSettings) -> tuple[tuple[str, str], ...]:
    """aggregated-emoji-topic is the system of record of the windows (GET /streams/ID/windows):
    compacted on its STREAM/WINDOW_START key, so each window's last update stays, and deleted
    past AGGREGATED_RETENTION_S or AGGREGATED_RETENTION_BYTES (per partition); a segment is
    closed (and so compactable) after AGGREGATED_SEGMENT_S."""
    return (("cleanup.policy", "compact,delete"),
            ("retention.ms", str(settings.aggregated_retention_s * 1000)),
            ("retention.bytes", str(settings.aggregated_retention_bytes)),
            ("segment.ms", str(settings.aggregated_segment_s * 1000)))


def topic_specs(settings: SharedSettings, brokers: int = 1) -> list[TopicSpec]:
    """Every topic of the pipeline, in the order data flows through them, for a cluster of
    ``brokers`` brokers. The events and the window aggregates, which nothing upstream can send
    again, also get min.insync.replicas."""
    rf = topology.topic_replicas(settings, brokers)
    isr = topology.topic_min_insync(settings, rf)
    specs = [TopicSpec(settings.emoji_events_topic, settings.emoji_events_partitions, rf, isr),
             TopicSpec(settings.aggregated_topic, settings.topic_partitions, rf, isr,
                       configs=aggregated_configs(settings))]
    specs += [TopicSpec(settings.cluster_topic(n), settings.topic_partitions, rf)
              for n in settings.clusters]
    specs += [TopicSpec(settings.subscribers_topic(n), settings.topic_partitions, rf)
              for n in settings.clusters]
    specs.append(TopicSpec(settings.streams_topic, 1, rf, isr, compacted=True))
    return specs


def broker_count(admin) -> int:
    return len(admin.describe_cluster()["brokers"])


def wait_for_brokers(settings: SharedSettings, count: int, timeout_s: float,
                     log: logging.Logger | None = None) -> bool:
    """Wait until the cluster has at least ``count`` brokers; False on timeout."""
    log = log or logging.getLogger(__name__)
    deadline = time.monotonic() + timeout_s
    seen = -1
    while True:
        try:
            admin = admin_client(settings, connect_timeout_s=max(1.0, min(10.0, timeout_s)))
            try:
                seen = broker_count(admin)
            finally:
                admin.close()
        except (KafkaUnavailable, KafkaError):
            seen = 0
        if seen >= count:
            return True
        if time.monotonic() >= deadline:
            log.error("the cluster at %s has %d broker(s), %d needed",
                      settings.kafka_bootstrap_servers, seen, count)
            return False
        log.info("waiting for %d broker(s): %d so far", count, seen)
        time.sleep(1.0)


def _create_request(spec: TopicSpec) -> dict:
    request: dict[str, object] = {"num_partitions": spec.partitions,
                                  "replication_factor": spec.replication_factor}
    configs = {}
    if spec.min_insync_replicas:
        configs[MIN_INSYNC] = str(spec.min_insync_replicas)
    if spec.compacted:
        configs["cleanup.policy"] = "compact"
    configs.update(spec.configs)
    if configs:
        request["configs"] = configs
    return request


def _set_configs(admin, spec: TopicSpec, log: logging.Logger) -> None:
    """Give an existing topic the configs of its spec (those it does not have yet); the others
    are left as they are."""
    if not spec.configs:
        return
    wanted = dict(spec.configs)
    current = admin.describe_configs([ConfigResource("TOPIC", spec.name, list(wanted))],
                                     config_filter="all")["topic"][spec.name]
    changes = {name: value for name, value in wanted.items()
               if current.get(name, {}).get("value") != value}
    if not changes:
        return
    result = admin.alter_configs([ConfigResource("TOPIC", spec.name, changes)])["topic"][spec.name]
    if result != "OK":
        raise RuntimeError(f"could not set {', '.join(changes)} of {spec.name}: {result}")
    log.info("%s: %s", spec.name, ", ".join(f"{name} set to {value}"
                                           for name, value in changes.items()))


def _set_min_insync(admin, spec: TopicSpec, replicas: int, log: logging.Logger) -> None:
    """Give an existing topic the min.insync.replicas of its spec, unless it has too few
    replicas for it (every write would fail)."""
    wanted = spec.min_insync_replicas
    if wanted is None:
        return
    if wanted > replicas:
        log.warning("%s has %d replica(s): %s=%d is not set (no write could succeed)",
                    spec.name, replicas, MIN_INSYNC, wanted)
        return
    current = admin.describe_configs([ConfigResource("TOPIC", spec.name, [MIN_INSYNC])],
                                     config_filter="all")["topic"][spec.name]
    value = current.get(MIN_INSYNC, {}).get("value")
    if value == str(wanted):
        return
    result = admin.alter_configs(
        [ConfigResource("TOPIC", spec.name, {MIN_INSYNC: str(wanted)})])["topic"][spec.name]
    if result != "OK":
        raise RuntimeError(f"could not set {MIN_INSYNC} of {spec.name}: {result}")
    log.info("%s: %s set to %d (was %s)", spec.name, MIN_INSYNC, wanted, value)


# What ensure_topics raises, each with a message for the operator.
TOPIC_ERRORS = (KafkaUnavailable, KafkaError, RuntimeError)


def ensure_topics(settings: SharedSettings, log: logging.Logger,
                  timeout_s: float = 0.0) -> list[str]:
    """:func:`create_topics`, tried again for ``timeout_s`` while the cluster cannot be reached
    (the brokers of a cluster that starts on several hosts at once refuse for a while)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return create_topics(settings, log)
        except (KafkaUnavailable, KafkaError) as err:
            if time.monotonic() >= deadline:
                raise
            log.info("topics not created yet (%s): trying again", err)
            time.sleep(2.0)


def create_topics(settings: SharedSettings, log: logging.Logger) -> list[str]:
    """Create the missing topics; report existing ones whose partitions or replicas differ,
    and give the events and aggregates topics their min.insync.replicas.

    Returns the names of the topics created by this call.
    """
    admin = admin_client(settings)
    try:
        # As many as configured (KAFKA_BROKERS), even before they have all joined.
        present = broker_count(admin)
        specs = topic_specs(settings, max(present, settings.kafka_brokers))
        rf = specs[0].replication_factor
        if rf > present:
            admin.close()
            if not wait_for_brokers(settings, rf, BROKERS_TIMEOUT_S, log):
                raise RuntimeError(f"a replication factor of {rf} needs {rf} brokers; "
                                   f"the cluster at {settings.kafka_bootstrap_servers} has fewer "
                                   "(set REPLICATION_FACTOR or --replication-factor)")
            admin = admin_client(settings)
        result = admin.create_topics({s.name: _create_request(s) for s in specs},
                                     raise_errors=False)
        created, failed = [], []
        for topic in result["topics"]:
            if topic["error_code"] == 0:
                created.append(topic["name"])
            elif topic["error_code"] != TOPIC_ALREADY_EXISTS:
                failed.append(f"{topic['name']}: {topic['error_message']}")
        if failed:
            raise RuntimeError("could not create topics: " + "; ".join(failed))
        existing = {t["name"]: t["partitions"]
                    for t in admin.describe_topics([s.name for s in specs])}
        for spec in specs:
            partitions = existing[spec.name]
            replicas = len(partitions[0]["replica_nodes"]) if partitions else 0
            state = "created" if spec.name in created else "exists"
            log.info("%-32s %s, %d partition(s), %d replica(s)", spec.name, state,
                     len(partitions), replicas)
            if len(partitions) < spec.partitions:
                log.warning("%s has %d partitions where %d are configured; "
                            "kafka-topics.sh --alter can add partitions",
                            spec.name, len(partitions), spec.partitions)
            elif len(partitions) > spec.partitions:
                log.warning("%s has %d partitions where %d are configured; Kafka cannot "
                            "remove partitions: it keeps them (a new topic gets %d)",
                            spec.name, len(partitions), spec.partitions, spec.partitions)
            if replicas != spec.replication_factor:
                log.warning("%s has %d replica(s) where %d are configured; "
                            "kafka-reassign-partitions can change them",
                            spec.name, replicas, spec.replication_factor)
            _set_min_insync(admin, spec, replicas, log)
            _set_configs(admin, spec, log)
        return created
    finally:
        admin.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/create_topics.sh",
        description="Create the pipeline's Kafka topics if they do not exist yet. "
                    "Options override the CLUSTER_COUNT, EMOJI_EVENTS_PARTITIONS, "
                    "TOPIC_PARTITIONS, REPLICATION_FACTOR and MIN_INSYNC_REPLICAS settings.")
    parser.add_argument("--clusters", type=int, help="number of viewer clusters")
    parser.add_argument("--events-partitions", type=int,
                        help="partitions of the emoji events topic")
    parser.add_argument("--partitions", type=int, help="partitions of every other topic")
    parser.add_argument("--replication-factor", type=int,
                        help="replicas of every topic (default: REPLICATION_FACTOR, or "
                             "min(3, brokers in the cluster) when that is 0)")
    parser.add_argument("--min-insync-replicas", type=int,
                        help="min.insync.replicas of the events and aggregates topics "
                             "(default: MIN_INSYNC_REPLICAS, or 2 when they have 3 or more "
                             "replicas)")
    args = parser.parse_args(argv)
    log = setup_logging("create_topics")
    overrides = {key: value for key, value in {
        "cluster_count": args.clusters,
        "emoji_events_partitions": args.events_partitions,
        "topic_partitions": args.partitions,
        "replication_factor": args.replication_factor,
        "min_insync_replicas": args.min_insync_replicas}.items() if value is not None}
    try:
        settings = load_from(SharedSettings, **overrides)
        ensure_topics(settings, log)
    except (*TOPIC_ERRORS, ConfigError) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
