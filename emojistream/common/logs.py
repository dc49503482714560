"""One logging format for every component, naming the component on each line."""

import logging
import os

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(component: str) -> logging.Logger:
    """Configure the root logger once and return the component's logger."""
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format=FORMAT)
    # kafka-python logs every failed reconnect attempt as an ERROR; the components report
    # what matters (Kafka unreachable) themselves.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    # py4j (pyspark's bridge to the JVM) logs every call at INFO.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    return logging.getLogger(component)
