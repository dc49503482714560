"""Create the system's topics idempotently (used by scripts/create_topics.sh)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from kafka.admin import NewTopic

from . import config
from .kafka_clients import KafkaUnavailable, admin_client
from .logs import setup_logging

TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int


def topic_specs(settings: config.Settings) -> list[TopicSpec]:
    """Every topic of the pipeline, in the order data flows through them."""
    rf = settings.replication_factor
    specs = [TopicSpec(settings.emoji_events_topic, settings.emoji_events_partitions, rf),
             TopicSpec(settings.aggregated_topic, settings.topic_partitions, rf)]
    specs += [TopicSpec(settings.cluster_topic(n), settings.topic_partitions, rf)
              for n in settings.clusters]
    specs += [TopicSpec(settings.subscribers_topic(n), settings.topic_partitions, rf)
              for n in settings.clusters]
    return specs


def ensure_topics(settings: config.Settings, log: logging.Logger) -> list[str]:
    """Create the missing topics; report existing ones whose partition count differs.

    Returns the names of the topics created by this call.
    """
    admin = admin_client(settings)
    try:
        specs = topic_specs(settings)
        result = admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor) for s in specs],
            raise_errors=False)
        created, failed = [], []
        for topic in result["topics"]:
            if topic["error_code"] == 0:
                created.append(topic["name"])
            elif topic["error_code"] != TOPIC_ALREADY_EXISTS:
                failed.append(f"{topic['name']}: {topic['error_message']}")
        if failed:
            raise RuntimeError("could not create topics: " + "; ".join(failed))
        existing = {t["name"]: len(t["partitions"])
                    for t in admin.describe_topics([s.name for s in specs])}
        for spec in specs:
            state = "created" if spec.name in created else "exists"
            log.info("%-32s %s, %d partition(s)", spec.name, state, existing[spec.name])
            if existing[spec.name] != spec.partitions:
                log.warning("%s has %d partitions where %d are configured; "
                            "kafka-topics.sh --alter can add partitions",
                            spec.name, existing[spec.name], spec.partitions)
        return created
    finally:
        admin.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/create_topics.sh",
        description="Create the pipeline's Kafka topics if they do not exist yet. "
                    "Options override the CLUSTER_COUNT, EMOJI_EVENTS_PARTITIONS, "
                    "TOPIC_PARTITIONS and REPLICATION_FACTOR settings.")
    parser.add_argument("--clusters", type=int, help="number of viewer clusters")
    parser.add_argument("--events-partitions", type=int,
                        help="partitions of the emoji events topic")
    parser.add_argument("--partitions", type=int, help="partitions of every other topic")
    parser.add_argument("--replication-factor", type=int, help="replicas of every topic")
    args = parser.parse_args(argv)
    log = setup_logging("create_topics")
    overrides = {key: value for key, value in {
        "cluster_count": args.clusters,
        "emoji_events_partitions": args.events_partitions,
        "topic_partitions": args.partitions,
        "replication_factor": args.replication_factor}.items() if value is not None}
    try:
        settings = config.load(**overrides)
        ensure_topics(settings, log)
    except (KafkaUnavailable, RuntimeError, config.ConfigError) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
