#!/usr/bin/env python3
"""Cluster N's subscriber: hands the cluster's window updates from Kafka to its WebSocket server.

    subscriber.py --cluster N --id K     two per cluster (K = 1, 2)
"""

import sys

from emojistream.delivery.subscriber import main

if __name__ == "__main__":
    sys.exit(main())
