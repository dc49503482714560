#!/usr/bin/env bash
# Kafka's producer benchmark (ProducerPerformance).
# Runs org.apache.kafka.tools.ProducerPerformance from the installed Kafka jars with the same
# arguments as Kafka's bin/kafka-producer-perf-test.sh, for example:
#   scripts/kafka-producer-perf-test.sh --help
set -euo pipefail
source "$(dirname "$0")/common.sh"
run_kafka_tool org.apache.kafka.tools.ProducerPerformance "$@"
