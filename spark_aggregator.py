#!/usr/bin/env python3
"""Spark Structured Streaming job: emoji events in, one aggregate per stream and 2-second window
out (emojistream/aggregator/job.py)."""

import sys

from emojistream.aggregator.main import main

if __name__ == "__main__":
    sys.exit(main())
