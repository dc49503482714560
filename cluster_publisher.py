#!/usr/bin/env python3
"""Cluster publisher: forwards cluster N's updates from clusterN-topic to
clusterN-topic-subscribers, where that cluster's subscribers read them.

One script for every cluster: ``cluster_publisher.py --cluster 2``. Settings from the environment
(see emojistream/config.py): KAFKA_BOOTSTRAP_SERVERS, CLUSTER_TOPIC_TEMPLATE,
SUBSCRIBERS_TOPIC_TEMPLATE, CLUSTER_COUNT.
"""

from __future__ import annotations

import argparse
import logging
import sys

from emojistream import config
from emojistream.common import kafka_clients
from emojistream.common.lifecycle import add_cluster_option, load_settings, stop_on_signals
from emojistream.common.logs import setup_logging
from emojistream.relay.relay import relay


def parse_args(argv, settings: config.Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cluster_option(parser, settings)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    settings = load_settings(setup_logging("cluster_publisher"))
    args = parse_args(argv, settings)
    log = logging.getLogger(f"cluster_publisher[{args.cluster}]")
    stop = stop_on_signals()
    try:
        relay(settings, settings.cluster_topic(args.cluster),
              [settings.subscribers_topic(args.cluster)],
              f"cluster{args.cluster}-publisher", log, stop,
              settings.cluster_publisher_metrics_port(args.cluster))
    except kafka_clients.KafkaUnavailable as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
