"""The aggregator's checkpoint reset (emojistream/aggregator/checkpoints.py): where a replay
starts, the first window it writes, and finding a poisoned watermark in Spark's offset log (no
JVM)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from emojistream import config
from emojistream.aggregator import checkpoints
from emojistream.aggregator.checkpoints import CheckpointError, Replay
from emojistream.common.events import format_timestamp
from tests.services import run, run_script

SETTINGS = config.load({})  # windows of 2 s, events up to 5 s ahead of their record, margin 1 s
T = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def write_offset_log(folder, batches: list[tuple[int, int]]) -> None:
    """Spark's offsets/N files for (watermark ms, batch clock ms) of batches 7, 8, ..."""
    (folder / "offsets").mkdir(parents=True)
    for batch, (watermark, clock) in enumerate(batches, start=7):
        metadata = {"batchWatermarkMs": watermark, "batchTimestampMs": clock, "conf": {}}
        (folder / "offsets" / str(batch)).write_text(
            f"v1\n{json.dumps(metadata)}\n{{\"emoji-events\":{{\"0\":{batch * 10}}}}}\n")


def test_a_replay_writes_from_the_first_window_whose_events_it_reads_in_full():
    # Events of a window starting at S may be in records from S - 6 s on.
    replay = Replay.starting(T, SETTINGS)
    assert replay.first_window == datetime(2026, 11, 29, 10, 0, 6, tzinfo=UTC)
    assert Replay.starting(datetime(2026, 11, 29, 10, 0, 0, 500_000, tzinfo=UTC),
                           SETTINGS).first_window == datetime(2026, 11, 29, 10, 0, 8, tzinfo=UTC)
    assert Replay.from_json(replay.to_json()) == replay
    assert replay.replay_from_ms == ms(T)


def test_the_replay_starts_before_the_first_window_the_poison_dropped(tmp_path):
    sane = ms(T) - 10_000
    write_offset_log(tmp_path, [(sane - 1000, ms(T) - 1000), (sane, ms(T)),
                                (ms(datetime(9999, 1, 1, tzinfo=UTC)), ms(T) + 500),
                                (ms(datetime(9999, 1, 1, tzinfo=UTC)), ms(T) + 1000)])
    start = checkpoints.detect_replay_start(tmp_path, SETTINGS)
    # The last sane watermark was 09:59:50: the window [09:59:50, 09:59:52) was still open, and
    # it is the first that the replay writes, complete.
    assert start == datetime(2026, 11, 29, 9, 59, 44, tzinfo=UTC)
    assert Replay.starting(start, SETTINGS).first_window == datetime(2026, 11, 29, 9, 59, 50,
                                                                     tzinfo=UTC)


@pytest.mark.parametrize("batches, message", [
    ([], "holds no offset log"),
    ([(ms(T) - 10_000, ms(T)), (ms(T) - 9_000, ms(T) + 1000)], "is not poisoned"),
    ([(ms(T) + 60_000, ms(T))], "every batch Spark still keeps"),
])
def test_without_evidence_of_the_poison_it_asks_for_a_time(tmp_path, batches, message):
    if batches:
        write_offset_log(tmp_path, batches)
    with pytest.raises(CheckpointError, match=message):
        checkpoints.detect_replay_start(tmp_path, SETTINGS)


def test_a_reset_keeps_the_old_checkpoint_and_leaves_the_replay_in_a_new_one(tmp_path):
    folder = tmp_path / "aggregator"
    write_offset_log(folder, [(ms(T), ms(T))])
    replay, kept = checkpoints.reset(str(folder), SETTINGS, T, now=T)
    assert kept == tmp_path / "aggregator.before-20261129T100000Z"
    assert (kept / "offsets" / "7").exists()
    assert sorted(p.name for p in folder.iterdir()) == [checkpoints.REPLAY_FILE]
    assert checkpoints.load_replay(str(folder)) == replay == Replay.starting(T, SETTINGS)


def test_a_remote_checkpoint_is_not_reset_here():
    with pytest.raises(CheckpointError, match="resets a local checkpoint"):
        checkpoints.reset("hdfs://namenode/checkpoints/aggregator", SETTINGS, T)
    assert checkpoints.load_replay("hdfs://namenode/checkpoints/aggregator") is None


@pytest.mark.parametrize("text, expected", [
    ("2026-11-29T09:00:00Z", datetime(2026, 11, 29, 9, 0, tzinfo=UTC)),
    ("90s", datetime(2026, 11, 29, 9, 58, 30, tzinfo=UTC)),
    ("10m", datetime(2026, 11, 29, 9, 50, tzinfo=UTC)),
    ("2h", datetime(2026, 11, 29, 8, 0, tzinfo=UTC)),
])
def test_replay_from_takes_a_time_or_how_long_ago(text, expected):
    assert checkpoints.parse_replay_from(text, now=T) == expected


def test_replay_from_refuses_anything_else():
    with pytest.raises(ValueError, match="an ISO-8601 time or a duration like 10m, got 'soon'"):
        checkpoints.parse_replay_from("soon", now=T)


# Spark's error (abridged) when the aggregator of windows per stream meets a checkpoint written
# before windows were counted per stream.
OLD_STATE = (
    "org.apache.spark.sql.execution.streaming.state.StateStoreKeySchemaNotCompatible: "
    "[STATE_STORE_KEY_SCHEMA_NOT_COMPATIBLE] Provided key schema does not match existing state "
    "key schema.\nPlease check number and type of fields.\nExisting key_schema=StructType("
    "StructField(window,...)) and new key_schema=StructType(StructField(stream_id,...))")


def test_a_checkpoint_of_another_shape_is_one_line_pointing_to_the_reset():
    from emojistream.aggregator.main import failure_message
    assert failure_message(OLD_STATE, "/var/cp") == (
        "the checkpoint /var/cp holds windows of another shape than this aggregator counts "
        "(written by an earlier version, before windows were counted per stream, or with other "
        "settings): scripts/reset_aggregator.sh starts a new checkpoint and counts again from a "
        "time you choose (org.apache.spark.sql.execution.streaming.state."
        "StateStoreKeySchemaNotCompatible: [STATE_STORE_KEY_SCHEMA_NOT_COMPATIBLE] Provided key "
        "schema does not match existing state key schema.)")
    assert failure_message("\nboom: the disk is full\nat ...", "/var/cp") == \
        "the query stopped: boom: the disk is full"


def test_replay_from_refuses_a_time_in_the_future():
    with pytest.raises(ValueError, match=r"--replay-from 2026-11-29T10:00:01Z is in the future "
                                         r"\(it is 2026-11-29T10:00:00.000Z now\)"):
        checkpoints.parse_replay_from("2026-11-29T10:00:01Z", now=T)
    assert checkpoints.parse_replay_from("2026-11-29T10:00:00Z", now=T) == T  # now is fine


def test_a_future_replay_from_stops_nothing_and_exits_non_zero(tmp_path):
    """Both ways in: spark_aggregator.py and scripts/reset_aggregator.sh (which checks before
    it stops the aggregator). Nothing is written under VAR_DIR."""
    future = format_timestamp(datetime.now(UTC) + timedelta(hours=1))
    env = dict(os.environ, VAR_DIR=str(tmp_path / "var"))
    direct = run("spark_aggregator.py", "--reset-checkpoint", "--replay-from", future, env=env)
    assert direct.returncode == 2
    assert f"error: --replay-from {future} is in the future" in direct.stderr
    script = run_script("reset_aggregator.sh", "--replay-from", future, env=env, check=False)
    assert script.returncode == 1
    assert f"error: --replay-from {future} is in the future" in script.stderr
    assert script.stderr.strip().endswith("nothing was changed; the aggregator runs on")
    assert not (tmp_path / "var").exists()
