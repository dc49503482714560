"""The aggregator's checkpoint: where it lives, how it is written, and how to start it afresh.

A reset moves the checkpoint aside (it is kept, renamed) and leaves a replay file in the new,
empty checkpoint folder: the aggregator then reads the events topic from the records written at
or after ``replay_from`` and writes only windows that those records hold completely (from
``first_window`` on), so every window it writes after a reset is exact:

    python spark_aggregator.py --reset-checkpoint --replay-from 2026-11-29T10:15:00Z
    scripts/reset_aggregator.sh --replay-from ...   (stops and restarts the aggregator around it)

Why a window from ``first_window`` on is complete: the aggregator counts an event only when its
time is at most MAX_EVENT_FUTURE_S + EVENT_TIME_MARGIN_S after its record's timestamp, so every
event of a window starting at S is in a record written at or after S minus that.

Without ``replay_from``, it is found in the old checkpoint's offset log, when that still holds the
micro-batch whose watermark was ahead of its own clock (a poisoned checkpoint): the replay then
starts early enough to recount every window that was still open before that batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

from emojistream.aggregator.settings import AggregatorSettings as Settings
from emojistream.common.events import InvalidEvent, format_timestamp, parse_timestamp

REPLAY_FILE = "emojistream-replay.json"
FILE_SYSTEM_CHECKPOINTS = ("org.apache.spark.sql.execution.streaming.checkpointing."
                           "FileSystemBasedCheckpointFileManager")


class CheckpointError(RuntimeError):
    """The checkpoint cannot be reset as asked; the message says why and what to do."""


def default_location(settings: Settings) -> str:
    """SPARK_CHECKPOINT, else VAR_DIR/spark/checkpoints/aggregator."""
    return settings.spark_checkpoint or str(settings.var_path / "spark" / "checkpoints"
                                            / "aggregator")


def is_local(checkpoint: str) -> bool:
    return urlparse(checkpoint).scheme in ("", "file")


def local_path(checkpoint: str) -> Path:
    return Path(urlparse(checkpoint).path if checkpoint.startswith("file:") else checkpoint)


def write_local_checkpoints_plainly(spark, checkpoint: str) -> None:
    """Checkpoint a local folder through Hadoop's FileSystem API rather than FileContext.

    Through FileContext every file Spark writes (offsets, commits, state) has its permissions set
    and its links resolved by forking chmod and readlink from the driver's JVM: measured here, 100
    to 150 ms of every micro-batch. A local rename is atomic either way. Other file systems (HDFS,
    object stores) keep Spark's default.
    """
    if is_local(checkpoint):
        spark.conf.set("spark.sql.streaming.checkpointFileManagerClass", FILE_SYSTEM_CHECKPOINTS)


@dataclass(frozen=True)
class Replay:
    """Where a checkpoint started afresh reads from, and the first window it writes."""

    replay_from: datetime
    first_window: datetime

    @classmethod
    def starting(cls, replay_from: datetime, settings: Settings) -> Replay:
        """The replay of the records written at or after ``replay_from``: its first window is
        the first one all of whose events are in those records."""
        earliest_event = replay_from.timestamp() + (settings.max_event_future_s
                                                   + settings.event_time_margin_s)
        first = math.ceil(earliest_event / settings.window_seconds) * settings.window_seconds
        return cls(replay_from, datetime.fromtimestamp(first, tz=UTC))

    @property
    def replay_from_ms(self) -> int:
        return int(self.replay_from.timestamp() * 1000)

    def to_json(self) -> str:
        return json.dumps({"replay_from": format_timestamp(self.replay_from),
                           "first_window": format_timestamp(self.first_window)})

    @classmethod
    def from_json(cls, text: str) -> Replay:
        values = json.loads(text)
        return cls(parse_timestamp(values["replay_from"]), parse_timestamp(values["first_window"]))


def load_replay(checkpoint: str) -> Replay | None:
    """The replay a reset left in the checkpoint, if any (only local checkpoints have one)."""
    if not is_local(checkpoint):
        return None
    path = local_path(checkpoint) / REPLAY_FILE
    return Replay.from_json(path.read_text()) if path.exists() else None


def reset(checkpoint: str, settings: Settings, replay_from: datetime | None,
          now: datetime | None = None) -> tuple[Replay, Path]:
    """Move the checkpoint aside and leave a replay file in its place; (the replay, where the
    old checkpoint went). CheckpointError when it cannot."""
    if not is_local(checkpoint):
        raise CheckpointError(f"--reset-checkpoint resets a local checkpoint; move {checkpoint} "
                              "aside with your file system's tools, then start the aggregator "
                              "with a new --checkpoint")
    folder = local_path(checkpoint)
    now = now or datetime.now(UTC)
    if replay_from is None:
        replay_from = detect_replay_start(folder, settings)
    replay = Replay.starting(replay_from, settings)
    kept = folder.with_name(f"{folder.name}.before-{now.strftime('%Y%m%dT%H%M%SZ')}")
    if folder.exists():
        folder.rename(kept)
    folder.mkdir(parents=True)
    (folder / REPLAY_FILE).write_text(replay.to_json() + "\n")
    return replay, kept


def detect_replay_start(folder: Path, settings: Settings) -> datetime:
    """The replay start that recounts every window a poisoned watermark dropped: the first one
    is the window that held the last sane watermark (windows before it had closed)."""
    batches = _offset_log(folder)
    if not batches:
        raise CheckpointError(f"{folder} holds no offset log; give --replay-from")
    poisoned = [i for i, (_, watermark, clock) in enumerate(batches) if watermark > clock]
    if not poisoned:
        raise CheckpointError(f"no batch in {folder}/offsets has a watermark ahead of its "
                              "clock: the checkpoint is not poisoned; give --replay-from to "
                              "replay anyway")
    if poisoned[0] == 0:
        raise CheckpointError(f"every batch Spark still keeps in {folder}/offsets is poisoned "
                              "(it keeps the last 100): give --replay-from, a time a little "
                              "before viewers stopped receiving updates")
    # The windows still open under the last sane watermark: from the one that holds it on.
    window = settings.window_seconds
    first_open = math.floor(batches[poisoned[0] - 1][1] / 1000 / window) * window
    start = first_open - (settings.max_event_future_s + settings.event_time_margin_s)
    return datetime.fromtimestamp(start, tz=UTC)


def _offset_log(folder: Path) -> list[tuple[int, int, int]]:
    """(batch id, watermark ms, batch clock ms) of every micro-batch in the offset log."""
    batches = []
    for path in (folder / "offsets").glob("[0-9]*"):
        lines = path.read_text().splitlines()
        try:
            metadata = json.loads(lines[1])
            batches.append((int(path.name), int(metadata["batchWatermarkMs"]),
                            int(metadata["batchTimestampMs"])))
        except (IndexError, ValueError, KeyError):
            continue  # a batch being written, or not Spark's
    return sorted(batches)


def parse_replay_from(text: str, now: datetime | None = None) -> datetime:
    """--replay-from: an ISO-8601 time, or how long ago, like 10m, 90s or 2h."""
    units = {"s": 1, "m": 60, "h": 3600}
    now = now or datetime.now(UTC)
    if text[-1:] in units and text[:-1].isdigit():
        return now - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        when = parse_timestamp(text)
    except InvalidEvent:
        raise ValueError(f"--replay-from must be an ISO-8601 time or a duration like 10m, "
                         f"got {text!r}") from None
    if when > now:
        raise ValueError(f"--replay-from {text} is in the future (it is {format_timestamp(now)} "
                         "now): no event was written then, and the aggregator would hold back "
                         "every window until that time; give a time in the past")
    return when
