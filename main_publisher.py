#!/usr/bin/env python3
"""Main publisher: every window update of aggregated-emoji-topic goes to each clusterN-topic."""

import sys

from emojistream.relay.main import main_publisher

if __name__ == "__main__":
    sys.exit(main_publisher())
