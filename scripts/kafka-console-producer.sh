#!/usr/bin/env bash
# Kafka's console producer: write lines of stdin as records.
# Runs org.apache.kafka.tools.ConsoleProducer from the installed Kafka jars with the same
# arguments as Kafka's bin/kafka-console-producer.sh, for example:
#   scripts/kafka-console-producer.sh --help
set -euo pipefail
source "$(dirname "$0")/common.sh"
run_kafka_tool org.apache.kafka.tools.ConsoleProducer "$@"
