"""bench.end_to_end's 'max' probe, with runs that hold up to a known rate instead of real ones."""

from __future__ import annotations

from types import SimpleNamespace

from bench.end_to_end import Bench, RunFigures


class Scripted(Bench):
    """A Bench whose runs hold at or below ``ceiling`` events/s."""

    def __init__(self, ceiling: int, **args):
        options = {"probe_start": 75_000, "probe_factor": 1.34, "probe_limit": 1_000_000,
                   "probe_refinements": 1, "probe_seconds": 60, **args}
        super().__init__(SimpleNamespace(window_seconds=2), SimpleNamespace(**options), [],
                         None, None)
        self.ceiling = ceiling

    def run(self, label, rate, seconds, phase):
        run = RunFigures(label, rate, seconds, rate, rate, 0, 1, 1, {}, {}, 0.0, 0.0, 0.0, {},
                         failures=[] if rate <= self.ceiling else ["p99"])
        self.runs.append(run)
        return run


def test_the_bisection_starts_from_the_highest_rate_the_step_up_held():
    bench = Scripted(90_000)
    bench.run("50,000/s", 50_000, 60, "50,000/s")
    best = bench.probe_max()
    # 75,000 holds, 100,500 does not, then the middle of those two: 87,800 holds.
    assert [r.target for r in bench.runs] == [50_000, 75_000, 100_500, 87_800]
    assert best.target == 87_800 and best.highest


def test_a_failed_fixed_rate_bounds_the_probe_from_above():
    bench = Scripted(60_000, probe_refinements=2)
    bench.run("50,000/s", 50_000, 60, "50,000/s")
    bench.run("100,000/s", 100_000, 60, "100,000/s")
    best = bench.probe_max()
    assert [r.target for r in bench.runs] == [50_000, 100_000, 75_000, 62_500]
    assert best.target == 50_000
