#!/usr/bin/env python3
"""Cluster publisher: cluster N's updates from clusterN-topic to clusterN-topic-subscribers.

    cluster_publisher.py --cluster N
"""

import sys

from emojistream.relay.main import cluster_publisher

if __name__ == "__main__":
    sys.exit(cluster_publisher())
