#!/usr/bin/env bash
# Kafka's console consumer: print a topic's records.
# Runs org.apache.kafka.tools.consumer.ConsoleConsumer from the installed Kafka jars with the same
# arguments as Kafka's bin/kafka-console-consumer.sh, for example:
#   scripts/kafka-console-consumer.sh --help
set -euo pipefail
source "$(dirname "$0")/common.sh"
run_kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer "$@"
