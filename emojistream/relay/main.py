"""The two publishers' command lines: main_publisher.py and cluster_publisher.py --cluster N.

The main publisher copies aggregated-emoji-topic to every clusterN-topic, in one consumer group
("main-publisher"): a second copy shares the work instead of doubling it. Cluster N's publisher
copies clusterN-topic to clusterN-topic-subscribers. The loop is relay.py's.
"""

from __future__ import annotations

import argparse
import logging

from emojistream import topology
from emojistream.common import kafka_clients
from emojistream.common.lifecycle import add_cluster_option, load_settings, stop_on_signals
from emojistream.common.logs import setup_logging
from emojistream.common.settings import SharedSettings
from emojistream.relay.relay import PublishRefused, relay

MAIN_GROUP = "main-publisher"
# The exit status of a publisher that Kafka refused an update for good (relay.PublishRefused).
EXIT_REFUSED = 3


def main_publisher(argv=None) -> int:
    log = setup_logging("main_publisher")
    settings = load_settings(log, SharedSettings)
    argparse.ArgumentParser(
        prog="main_publisher.py",
        description="Copies every window update of AGGREGATED_TOPIC to each cluster's topic "
                    "(CLUSTER_TOPIC_TEMPLATE, clusters 1 to CLUSTER_COUNT).").parse_args(argv)
    return _run(settings, settings.aggregated_topic,
                [settings.cluster_topic(n) for n in settings.clusters], MAIN_GROUP,
                topology.main_publisher_metrics_port(settings), log)


def cluster_publisher(argv=None) -> int:
    settings = load_settings(setup_logging("cluster_publisher"), SharedSettings)
    parser = argparse.ArgumentParser(
        prog="cluster_publisher.py",
        description="Copies cluster N's updates from CLUSTER_TOPIC_TEMPLATE to "
                    "SUBSCRIBERS_TOPIC_TEMPLATE, where the cluster's subscribers read them.")
    add_cluster_option(parser, settings)
    n = parser.parse_args(argv).cluster
    return _run(settings, settings.cluster_topic(n), [settings.subscribers_topic(n)],
                f"cluster{n}-publisher", topology.cluster_publisher_metrics_port(settings, n),
                logging.getLogger(f"cluster_publisher[{n}]"))


def _run(settings: SharedSettings, source: str, targets: list[str], group_id: str,
         metrics_port: int, log: logging.Logger) -> int:
    """Relay until SIGTERM or SIGINT: 0; 1 with one line when Kafka or a topic is missing;
    EXIT_REFUSED when Kafka refused an update for good (nothing committed past it)."""
    stop = stop_on_signals()
    try:
        relay(settings, source, targets, group_id, log, stop, metrics_port)
    except kafka_clients.KafkaUnavailable as err:
        log.error("%s", err)
        return 1
    except PublishRefused as err:
        log.error("stopping: %s", err)
        return EXIT_REFUSED
    return 0
