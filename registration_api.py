#!/usr/bin/env python3
"""Registration of viewers: assigns each one a cluster, a WebSocket endpoint and a token, and
serves the live page (port REGISTRATION_PORT, 5001)."""

import sys

from emojistream.registration.server import main

if __name__ == "__main__":
    sys.exit(main())
