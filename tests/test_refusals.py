"""The refused clients' log lines (emojistream/common/refusals.py): one line of exact counts per
interval, whatever the number of refusals, with a clock the test moves."""

from __future__ import annotations

import asyncio
import logging

from emojistream.common.refusals import RefusalLog


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog) -> list[str]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "test_refusals"
            and r.levelno >= logging.INFO]


def test_refusals_within_an_interval_make_one_line_of_exact_counts(caplog):
    caplog.set_level(logging.DEBUG, logger="test_refusals")
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test_refusals"), 10, clock)
    for i in range(1200):
        refusals.refused("bad token", f"10.0.0.{i % 250}:4000")
        clock.now += 0.005  # 6 s in all
    for _ in range(34):
        refusals.refused("rate limited")
    assert lines(caplog) == []  # not yet: the interval has not passed
    clock.now += 4.01  # 10 s since the start: the next refusal writes the line
    refusals.refused("rate limited")
    assert lines(caplog) == [
        ("INFO", "refused 1235 client(s) in the last 10 s: bad token 1200, rate limited 35")]
    refusals.flush()  # nothing new: no line
    clock.now += 2.5
    refusals.refused("bad subscriber key")
    refusals.flush()
    assert lines(caplog)[1:] == [("INFO", "refused 1 client(s) in the last 2.5 s: "
                                          "bad subscriber key 1")]
    # Each refusal is there at DEBUG, for whoever needs the addresses.
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 1236 and debug[0] == "refused 10.0.0.0:4000: bad token"


def test_the_asyncio_flush_writes_each_interval_and_once_more_when_cancelled(caplog):
    caplog.set_level(logging.INFO, logger="test_refusals")
    refusals = RefusalLog(logging.getLogger("test_refusals"), 0.05)

    async def scenario():
        task = asyncio.get_running_loop().create_task(refusals.run())
        refusals.refused("bad token")
        refusals.refused("bad token")
        await asyncio.sleep(0.2)  # flushed by the task
        refusals.refused("too many connections from the address")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    messages = [m for _level, m in lines(caplog)]
    assert len(messages) == 2
    assert messages[0].startswith("refused 2 client(s) in the last 0.")
    assert messages[0].endswith(" s: bad token 2")
    assert messages[1].endswith(" s: too many connections from the address 1")
