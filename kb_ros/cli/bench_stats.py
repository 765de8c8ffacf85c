"""
Timing primitives every ``kb-ros bench`` section shares: per-call samples and their summaries.

Every figure is kept as samples in ms so the report can give median and p99, their ratio to the
8 ms chunk, and draw a CDF. Wall time is what a real-time deadline sees; thread CPU time leaves
out time spent descheduled, so it stays meaningful on a machine shared with other work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kb_ros.audio.clock import CHUNK_MS

CDF_POINTS = 200  # samples kept per distribution for the plots


@dataclass
class Samples:
    """Per-call wall and thread-CPU times of one measured operation, in ms."""

    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        """Wall p50/p99 with ratios to the chunk, CPU p50/p99, count and CDF points."""
        return {**percentiles(self.wall_ms),
                "cpu_p50": _round(np.percentile(self.cpu_ms, 50)) if self.cpu_ms else None,
                "cpu_p99": _round(np.percentile(self.cpu_ms, 99)) if self.cpu_ms else None}


def _round(value: float) -> float:
    return round(float(value), 4)


def percentiles(values_ms: list[float] | np.ndarray) -> dict:
    """
    ``{"p50", "p99"}`` in ms, the same as ratios to the 8 ms chunk, the count, CDF points.

    ``cdf_ms`` holds ``CDF_POINTS`` evenly spaced quantiles (0..100 %) for plotting.
    """
    values = np.asarray(values_ms, np.float64)
    if not len(values):
        raise ValueError("no samples to summarize")
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": _round(p50), "p99": _round(p99), "p50_ratio": _round(p50 / CHUNK_MS),
            "p99_ratio": _round(p99 / CHUNK_MS), "n": int(len(values)),
            "cdf_ms": [_round(v) for v in np.percentile(values, np.linspace(0, 100,
                                                                            CDF_POINTS))]}


def time_calls(call: Callable[[int], object], count: int, warmup: int = 0,
               before: Callable[[int], object] | None = None) -> Samples:
    """
    Call ``call(i)`` for i in ``range(warmup + count)``; keep the last ``count`` timings.

    ``before(i)``, if given, runs untimed before each call (e.g. to pace calls in real time).
    """
    samples = Samples()
    for i in range(warmup + count):
        if before is not None:
            before(i)
        start_wall, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        call(i)
        if i >= warmup:
            samples.cpu_ms.append((time.thread_time_ns() - start_cpu) / 1e6)
            samples.wall_ms.append((time.perf_counter_ns() - start_wall) / 1e6)
    return samples
