#!/usr/bin/env python3
"""A simulated viewer: registers, watches its stream's window updates, and sends emojis.

    client_simulator.py CLIENT_ID [--stream ID] [--rate R] [--batch B] [--duration S]
"""

import sys

from emojistream.client.simulator import main

if __name__ == "__main__":
    sys.exit(main())
