"""The benchmarks' figures as PNG files (matplotlib, Agg backend: no display needed).

    plots.cdf(path, {"1,000/s": [(latency_ms, weight), ...]}, title=..., xlabel="ms")
    plots.curves(path, {"granian": [(x, y), ...]}, title=..., xlabel=..., ylabel=...)
    plots.bars(path, {"row": [trial, trial, ...]}, title=..., xlabel="events/s")

Each writes one PNG (the folder must exist) and returns its path. Bars show the median of the
trials with their range as an error bar.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)

log = logging.getLogger("plots")

SIZE = (8, 4.5)
DPI = 110


def _save(figure, path: Path | str, title: str) -> Path:
    path = Path(path)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    log.info("plot written to %s", path)
    return path


def cdf(path: Path | str, series: dict[str, list[tuple[float, float]]], title: str,
        xlabel: str = "latency (ms)", marks: tuple[float, ...] = (0.5, 0.95, 0.99)) -> Path:
    """Cumulative distribution of (value, weight) samples, one line per series; horizontal
    guides at ``marks``."""
    figure, axes = plt.subplots(figsize=SIZE)
    for label, samples in series.items():
        ordered = sorted(samples)
        total = sum(w for _, w in ordered) or 1
        xs, ys, running = [], [], 0.0
        for value, weight in ordered:
            running += weight
            xs.append(value)
            ys.append(running / total)
        axes.step(xs, ys, where="post", label=label)
    for mark in marks:
        axes.axhline(mark, color="grey", linewidth=0.6, linestyle=":")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("fraction at or below")
    axes.set_ylim(0, 1.01)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path, title)


def curves(path: Path | str, series: dict[str, list[tuple[float, float]]], title: str,
           xlabel: str, ylabel: str, diagonal: bool = False) -> Path:
    """One line with markers per series; ``diagonal`` draws y = x (e.g. achieved vs target)."""
    figure, axes = plt.subplots(figsize=SIZE)
    for label, points in series.items():
        xs, ys = zip(*sorted(points), strict=True) if points else ((), ())
        axes.plot(xs, ys, marker="o", label=label)
    if diagonal:
        top = max((max(x, y) for points in series.values() for x, y in points), default=1)
        axes.plot([0, top], [0, top], color="grey", linewidth=0.6, linestyle=":", label="y = x")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path, title)


def bars(path: Path | str, trials: dict[str, list[float]], title: str, xlabel: str,
         log_scale: bool = False) -> Path:
    """Horizontal bars: the median of each row's trials, the error bar from min to max."""
    labels = list(trials)
    medians = [statistics.median(trials[k]) for k in labels]
    low = [m - min(trials[k]) for m, k in zip(medians, labels, strict=True)]
    high = [max(trials[k]) - m for m, k in zip(medians, labels, strict=True)]
    figure, axes = plt.subplots(figsize=(10, 0.45 * len(labels) + 1.5))
    axes.barh(range(len(labels)), medians, xerr=[low, high], capsize=3, color="tab:blue")
    axes.set_yticks(range(len(labels)), labels, fontsize="small")
    axes.invert_yaxis()
    if log_scale:
        axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path, title)
