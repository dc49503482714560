#!/usr/bin/env python3
"""Main publisher: every window update of aggregated-emoji-topic goes to each clusterN-topic.

One consumer group ("main-publisher"), so running a second copy shares the work instead of
doubling it. Settings from the environment (see emojistream/config.py): KAFKA_BOOTSTRAP_SERVERS,
AGGREGATED_TOPIC, CLUSTER_TOPIC_TEMPLATE, CLUSTER_COUNT.
"""

from __future__ import annotations

import argparse
import sys

from emojistream.common import kafka_clients
from emojistream.common.lifecycle import load_settings, stop_on_signals
from emojistream.common.logs import setup_logging
from emojistream.relay.relay import relay

GROUP_ID = "main-publisher"


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    log = setup_logging("main_publisher")
    settings = load_settings(log)
    stop = stop_on_signals()
    targets = [settings.cluster_topic(n) for n in settings.clusters]
    try:
        relay(settings, settings.aggregated_topic, targets, GROUP_ID, log, stop,
              settings.main_publisher_metrics_port())
    except kafka_clients.KafkaUnavailable as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
