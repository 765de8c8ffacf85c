"""
An emulated network link: delay, jitter, loss, duplication, reordering and outages, seeded.

Pure and clock-agnostic (times are passed in), so ``link_node``, the demo, offline evaluation
and tests all share the same behaviour for the same seed.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class LinkProfile:
    """One direction of a link. ``reorder=False`` keeps FIFO order despite jitter."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: bool = False

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        if not (0.0 <= self.loss <= 1.0 and 0.0 <= self.duplicate <= 1.0):
            raise ValueError("loss and duplicate are probabilities in [0, 1]")


@dataclass
class LinkStats:
    offered: int = 0
    delivered: int = 0
    lost: int = 0
    lost_in_outage: int = 0
    duplicated: int = 0


class EmulatedLink(Generic[T]):
    """Schedules each offered item for delivery at ``now + delay + U(0, jitter)`` unless lost."""

    def __init__(self, profile: LinkProfile, seed: int = 0) -> None:
        self.profile = profile
        self.stats = LinkStats()
        self._rng = np.random.default_rng(seed)
        self._queue: list[tuple[int, int, T]] = []
        self._order = itertools.count()
        self._last_due_ns = 0
        self._outages_ns: list[tuple[int, int]] = []

    def schedule_outage(self, start_ns: int, end_ns: int) -> None:
        """Lose everything offered from ``start_ns`` until ``end_ns`` (a link down, say)."""
        if end_ns <= start_ns:
            raise ValueError(f"an outage must end after it starts, got {start_ns}..{end_ns}")
        self._outages_ns.append((start_ns, end_ns))

    def in_outage(self, now_ns: int) -> bool:
        return any(start <= now_ns < end for start, end in self._outages_ns)

    def offer(self, item: T, now_ns: int) -> None:
        self.stats.offered += 1
        if self.in_outage(now_ns):
            self.stats.lost_in_outage += 1
            return
        p = self.profile
        if p.loss and self._rng.random() < p.loss:
            self.stats.lost += 1
            return
        copies = 2 if p.duplicate and self._rng.random() < p.duplicate else 1
        self.stats.duplicated += copies - 1
        for _ in range(copies):
            due = now_ns + int((p.delay_ms + p.jitter_ms * self._rng.random()) * 1e6)
            if not p.reorder:
                due = max(due, self._last_due_ns)
                self._last_due_ns = due
            heapq.heappush(self._queue, (due, next(self._order), item))

    def due(self, now_ns: int) -> list[T]:
        """Items whose delivery time has come, in delivery order."""
        out = []
        while self._queue and self._queue[0][0] <= now_ns:
            out.append(heapq.heappop(self._queue)[2])
        self.stats.delivered += len(out)
        return out

    def next_due_ns(self) -> int | None:
        return self._queue[0][0] if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)
