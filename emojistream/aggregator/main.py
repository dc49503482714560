"""spark_aggregator.py: the aggregator's command line, progress, metrics and stop (the query
itself is job.py's). Metrics: http://METRICS_HOST:METRICS_FIRST_PORT/metrics; Spark's own UI at
SPARK_UI_PORT (logged)."""

from __future__ import annotations

import argparse
import time

from py4j.protocol import Py4JError
from pyspark.errors import StreamingQueryException
from pyspark.sql.streaming import StreamingQueryListener

from emojistream import topology
from emojistream.aggregator import checkpoints
from emojistream.aggregator.job import start_query
from emojistream.aggregator.metrics import AggregatorMetrics
from emojistream.aggregator.settings import AggregatorSettings
from emojistream.aggregator.spark import ConnectorMissing, spark_session
from emojistream.common import kafka_clients, metrics, urls
from emojistream.common.events import format_timestamp
from emojistream.common.lifecycle import load_settings, stop_on_signals
from emojistream.common.logs import setup_logging

# In Spark's error for a checkpoint whose state has other columns than the query's
# (STATE_STORE_KEY_SCHEMA_NOT_COMPATIBLE, STATE_STORE_VALUE_SCHEMA_NOT_COMPATIBLE).
STATE_SCHEMA_CHANGED = "SCHEMA_NOT_COMPATIBLE"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="spark_aggregator.py",
        description="Aggregate emoji events into windows with Spark Structured Streaming. "
                    "Settings come from the environment (docs/operations.md#settings): "
                    "KAFKA_BOOTSTRAP_SERVERS, SPARK_MASTER, WINDOW_SECONDS, WATERMARK_DELAY_S, "
                    "NORMALIZE_THRESHOLD, NORMALIZE_DIVISOR, EMOJIS, ...")
    parser.add_argument("--checkpoint",
                        help="checkpoint folder or URL, e.g. hdfs://... on a cluster "
                             "(default: SPARK_CHECKPOINT, else "
                             "$VAR_DIR/spark/checkpoints/aggregator)")
    parser.add_argument("--progress-interval", type=float, default=10.0,
                        help="seconds between progress lines in the log (default: 10)")
    parser.add_argument("--reset-checkpoint", action="store_true",
                        help="move the checkpoint aside, leave a replay in its place and exit "
                             "(see docs/operations.md; scripts/reset_aggregator.sh does it "
                             "around a running system)")
    parser.add_argument("--replay-from", metavar="TIME",
                        help="with --reset-checkpoint: replay the events written since TIME "
                             "(ISO-8601, or how long ago: 10m, 2h); default: from before the "
                             "batch that moved the watermark ahead of its clock")
    parser.add_argument("--check-arguments", action="store_true",
                        help="check the arguments and exit (scripts/reset_aggregator.sh does, "
                             "before it stops the aggregator)")
    args = parser.parse_args(argv)
    if args.replay_from and not args.reset_checkpoint:
        parser.error("--replay-from goes with --reset-checkpoint")
    if args.replay_from:
        try:
            args.replay_from = checkpoints.parse_replay_from(args.replay_from)
        except ValueError as err:
            parser.error(str(err))
    return args


class Progress(StreamingQueryListener):
    """Each micro-batch's progress into the metrics, and into the log: skipped events at once,
    the totals every ``interval_s``."""

    def __init__(self, aggregator_metrics: AggregatorMetrics, log, interval_s: float,
                 watermark_delay_s: int = 0):
        self.metrics, self.log, self.interval_s = aggregator_metrics, log, interval_s
        self.watermark_delay_s = watermark_delay_s
        self.last_logged = time.monotonic()

    def onQueryStarted(self, event):
        self.log.info("query %s started", event.id)

    def onQueryProgress(self, event):
        progress = event.progress
        dropped = self.metrics.record(progress)
        if dropped:
            self.log.warning("batch %d: dropped %d row(s) of events later than the watermark "
                             "%s (WATERMARK_DELAY_S=%s; %d dropped in all): they count in no "
                             "window", progress.batchId, dropped,
                             (progress.eventTime or {}).get("watermark"),
                             self.watermark_delay_s, self.metrics.dropped_late_total())
        observed = progress.observedMetrics.get("input")
        malformed, untimely = ((observed["malformed"], observed["untimely"])
                               if observed is not None else (0, 0))
        if malformed or untimely:
            self.log.warning("batch %d: skipped %d event(s): %d not valid events, %d too far "
                             "from their record's time (%d skipped in all)", progress.batchId,
                             malformed + untimely, malformed, untimely,
                             self.metrics.skipped_total())
        if time.monotonic() - self.last_logged >= self.interval_s:
            self.last_logged = time.monotonic()
            self.log.info("batch %d: %d records in all, %d events skipped; last batch %d "
                          "records in %s ms", progress.batchId, self.metrics.records_total(),
                          self.metrics.skipped_total(), progress.numInputRows,
                          progress.durationMs.get("triggerExecution"))

    def onQueryIdle(self, event):
        pass

    def onQueryTerminated(self, event):
        pass  # main() reports why the query stopped


def failure_message(error: str, checkpoint: str) -> str:
    """One line for the operator on a query that stopped with ``error`` (Spark's message)."""
    first_line = next((line for line in error.splitlines() if line.strip()), "no reason given")
    if STATE_SCHEMA_CHANGED in error:
        return (f"the checkpoint {checkpoint} holds windows of another shape than this aggregator "
                "counts (written by an earlier version, before windows were counted per "
                "stream, or with other settings): scripts/reset_aggregator.sh starts a new "
                f"checkpoint and counts again from a time you choose ({first_line.strip()})")
    return f"the query stopped: {first_line.strip()}"


def reset_checkpoint(checkpoint: str, settings, replay_from, log) -> int:
    try:
        replay, kept = checkpoints.reset(checkpoint, settings, replay_from)
    except (checkpoints.CheckpointError, OSError) as err:
        log.error("cannot reset the checkpoint: %s", err)
        return 1
    log.info("checkpoint reset: the old one is in %s; the aggregator will replay the events "
             "written since %s and write the windows from %s on", kept,
             format_timestamp(replay.replay_from), format_timestamp(replay.first_window))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.check_arguments:
        return 0
    log = setup_logging("spark_aggregator")
    settings = load_settings(log, AggregatorSettings)
    checkpoint = args.checkpoint or checkpoints.default_location(settings)
    if args.reset_checkpoint:
        return reset_checkpoint(checkpoint, settings, args.replay_from, log)
    try:
        kafka_clients.wait_for_kafka(settings)
        spark = spark_session(settings, "emoji-aggregator")
    except (kafka_clients.KafkaUnavailable, ConnectorMissing) as err:
        log.error("%s", err)
        return 1
    stopping = stop_on_signals()
    try:
        aggregator_metrics = serve_metrics(spark, settings, log, args.progress_interval)
        query = start_query(spark, settings, checkpoint)
        aggregator_metrics.ready.set(1)
        log.info("ready: aggregating %s into %s: %s-second windows, watermark %s s, master %s",
                 settings.emoji_events_topic, settings.aggregated_topic,
                 settings.window_seconds, settings.watermark_delay_s, settings.spark_master)
        # Wait in short steps: a signal handler only runs between Python calls.
        while not stopping.is_set():
            if query.awaitTermination(1):
                return 1
        return 0
    except StreamingQueryException as err:
        log.error("%s", failure_message(str(err), checkpoint))
        return 1
    except Py4JError:
        if stopping.is_set():
            return 0
        log.exception("lost Spark's JVM")
        return 1
    finally:
        stop_spark(spark, log)


def serve_metrics(spark, settings: AggregatorSettings, log,
                  log_interval_s: float) -> AggregatorMetrics:
    """The metrics on their port, from every batch's progress; where Spark's UI is."""
    aggregator_metrics = AggregatorMetrics()
    spark.streams.addListener(Progress(aggregator_metrics, log, log_interval_s,
                                       settings.watermark_delay_s))
    metrics.serve(aggregator_metrics.registry, settings.metrics_host,
                  topology.aggregator_metrics_port(settings), "spark_aggregator")
    ui = spark.sparkContext.uiWebUrl  # named by host name; it listens on SPARK_UI_HOST
    where = f"http://{urls.host_port(settings.spark_ui_host, int(ui.rsplit(':', 1)[1]))}/" \
        if ui else "off (SPARK_UI_ENABLED=false)"
    log.info("Spark's UI: %s", where)
    return aggregator_metrics


def stop_spark(spark, log) -> None:
    log.info("stopping")
    try:
        for query in spark.streams.active:
            query.stop()
        spark.stop()
    except Py4JError:
        log.info("Spark's JVM has already stopped")
