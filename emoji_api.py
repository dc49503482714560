#!/usr/bin/env python3
"""HTTP ingest of emoji reactions: validates them and hands them to Kafka (port API_PORT, 5000).

    POST /emoji    one event  ->  {"status": "success"}
    POST /emojis   a JSON array of events
"""

import sys

from emojistream.ingest.server import main

if __name__ == "__main__":
    sys.exit(main())
