#!/usr/bin/env bash
# Kafka's topic tool (create, list, describe, alter, delete topics).
# Runs org.apache.kafka.tools.TopicCommand from the installed Kafka jars with the same
# arguments as Kafka's bin/kafka-topics.sh, for example:
#   scripts/kafka-topics.sh --help
set -euo pipefail
source "$(dirname "$0")/common.sh"
run_kafka_tool org.apache.kafka.tools.TopicCommand "$@"
