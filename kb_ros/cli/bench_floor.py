"""
The machine's own floor: how late a thread wakes from an 8 ms sleep, and what pacing costs.

Neither figure involves kb_ros. A node paced by the chunk clock can be no more punctual than its
thread's wake-up, so the wake-up lateness bounds the end-to-end latency from below. And a fixed
amount of work (matrix products about the size of a small model's step) costs more CPU when it
runs once per 8 ms than back to back: caches, branch predictors and the core's clock go cold
while the thread sleeps, and a virtual CPU may be handed to another guest. That slowdown is the
part of a paced step's cost that no change to the model removes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from kb_ros.audio.clock import CHUNK_MS
from kb_ros.cli.bench_stats import Samples, percentiles, time_calls

PROC_STAT = Path("/proc/stat")
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal of the "cpu" line
STEAL_FIELD = 7
WORK_MATRICES = 200  # 64 x 64 float32 products per call: about 0.7 ms here, a kb step's size
WORK_SIZE = 64


class StealMeter:
    """
    Steal time per section, from ``/proc/stat``; None where the kernel does not report it.

    Steal is the share of the time this machine's CPUs wanted to run that the hypervisor gave
    to other guests: why a virtual machine's wall times vary from run to run.
    """

    def __init__(self) -> None:
        self.sections: dict[str, float | None] = {}
        self._section = ""
        self._start: list[int] | None = None

    @staticmethod
    def _read() -> list[int] | None:
        try:
            fields = PROC_STAT.read_text().split("\n", 1)[0].split()[1:]
            return [int(value) for value in fields]
        except (OSError, ValueError):
            return None

    def start(self, section: str) -> None:
        """Open ``section``: steal time counts from now until ``stop``."""
        self._section, self._start = section, self._read()

    def stop(self) -> None:
        """Close the open section and keep its steal share (%)."""
        end, start = self._read(), self._start
        share = None
        if start is not None and end is not None and len(end) > STEAL_FIELD:
            delta = [b - a for a, b in zip(start, end)]
            busy = sum(delta[i] for i in BUSY_FIELDS)
            share = round(100 * delta[STEAL_FIELD] / busy, 2) if busy > 0 else 0.0
        self.sections[self._section] = share


def wakeup_lateness_ms(ticks: int) -> list[float]:
    """How late each of ``ticks`` waits for an absolute 8 ms deadline returns, in ms."""
    stop = threading.Event()  # the nodes pace with Event.wait too
    period_s = CHUNK_MS / 1e3
    start = time.monotonic()
    late = []
    for tick in range(1, ticks + 1):
        deadline = start + tick * period_s
        delay = deadline - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        late.append((time.monotonic() - deadline) * 1e3)
    return late


def _fixed_work() -> Callable[[int], object]:
    rng = np.random.default_rng(0)
    matrices = rng.standard_normal((WORK_MATRICES, WORK_SIZE, WORK_SIZE)).astype(np.float32)
    vector = np.ones((1, WORK_SIZE), np.float32)

    def work(_: int) -> object:
        out = vector
        for matrix in matrices:
            out = np.tanh(out @ matrix)
        return out

    return work


def paced_and_back_to_back(calls: int) -> tuple[Samples, Samples]:
    """Time the same fixed work ``calls`` times back to back, then once per 8 ms."""
    work = _fixed_work()
    back_to_back = time_calls(work, calls, warmup=20)
    period_s = CHUNK_MS / 1e3
    start = time.monotonic() + period_s

    def wait_for_tick(i: int) -> None:
        delay = start + i * period_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    paced = time_calls(work, calls, warmup=20, before=wait_for_tick)
    return back_to_back, paced


def floor_section(quick: bool, notify: Callable[[str], None]) -> dict:
    """Wake-up lateness of an 8 ms paced loop, and the paced / back-to-back cost of fixed work."""
    seconds = 1.0 if quick else 5.0
    notify(f"8 ms wake-ups for {seconds:g} s")
    late = wakeup_lateness_ms(round(seconds * 1e3 / CHUNK_MS))
    notify("fixed work, back to back and paced")
    back_to_back, paced = paced_and_back_to_back(100 if quick else 400)
    b2b_cpu, paced_cpu = (float(np.median(s.cpu_ms)) for s in (back_to_back, paced))
    return {"wakeup_late_ms": percentiles(late),
            "fixed_work": {"matrices": WORK_MATRICES, "size": WORK_SIZE,
                           "back_to_back_ms": back_to_back.summary(),
                           "paced_ms": paced.summary(),
                           "paced_slowdown": round(paced_cpu / b2b_cpu, 3)}}
