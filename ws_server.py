#!/usr/bin/env python3
"""Cluster N's WebSocket server: fans window updates out to the cluster's viewers.

    ws_server.py --cluster N     listens on WS_HOST, port WS_FIRST_PORT + N - 1
"""

import sys

from emojistream.delivery.server import main

if __name__ == "__main__":
    sys.exit(main())
