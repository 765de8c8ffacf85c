"""
Serving hints to many device streams from one model: queue per stream, micro-batch, step.

Streams are not synchronous, so there is no batch to wait for. Each stream queues its chunks;
``step()`` takes the oldest queued chunk of every stream that has one and runs them as one
batched step. The caller runs ``step()`` whenever chunks are queued, after taking in what has
arrived: a stream is never waited for (a chunk waits at most for the step in progress), a
stopped stream costs nothing, and chunks that arrive during a step are batched into the next.
A queue holds at most ``max_queue_chunks``: a server that falls that far behind drops a
stream's oldest chunk (counted) rather than grow without bound.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from kb_ros.audio.clock import Chunk
from kb_ros.boosting.batched_engine import BatchedEngine
from kb_ros.boosting.stats import LatencyStats

# (stream index, hint): the model's output for the input chunk whose stamp the hint carries
HintSink = Callable[[int, Chunk], None]


@dataclass
class StreamCounters:
    """What happened to one stream's chunks since the server started."""

    queued: int = 0
    hints: int = 0
    stale_drops: int = 0
    resets: int = 0


@dataclass
class ServerStats:
    """Per-step figures of the whole server: model step time, queueing delay, batch size."""

    step_ms: LatencyStats
    wait_ms: LatencyStats
    batch_size: LatencyStats
    steps: int = 0
    streams: list[StreamCounters] = field(default_factory=list)


@dataclass
class _Queued:
    chunk: Chunk
    queued_s: float  # time.perf_counter() when queued


class HintServer:
    """Per-stream bounded queues in front of a ``BatchedEngine``; see the module docstring."""

    def __init__(self, engine: BatchedEngine, sink: HintSink, *, max_queue_chunks: int = 125,
                 stats_window: int = 4096) -> None:
        if max_queue_chunks < 1:
            raise ValueError(f"max_queue_chunks must be >= 1, got {max_queue_chunks}")
        self.engine = engine
        self._sink = sink
        self._max_queue = max_queue_chunks
        self._queues: list[deque[_Queued]] = [deque() for _ in range(engine.max_streams)]
        self.stats = ServerStats(LatencyStats(stats_window), LatencyStats(stats_window),
                                 LatencyStats(stats_window),
                                 streams=[StreamCounters() for _ in range(engine.max_streams)])

    @property
    def pending(self) -> bool:
        return any(self._queues)

    def queued(self, stream: int) -> int:
        return len(self._queues[stream])

    def submit(self, stream: int, chunks: Iterable[Chunk]) -> int:
        """Queue a stream's chunks, dropping its oldest beyond the bound; return the drops."""
        queue, counters = self._queues[stream], self.stats.streams[stream]
        now_s = time.perf_counter()
        dropped = 0
        for chunk in chunks:
            if len(queue) == self._max_queue:
                queue.popleft()
                dropped += 1
            queue.append(_Queued(chunk, now_s))
            counters.queued += 1
        counters.stale_drops += dropped
        return dropped

    def step(self) -> int:
        """Run one batched step over every stream with a queued chunk; return how many."""
        batch = {stream: queue.popleft() for stream, queue in enumerate(self._queues) if queue}
        if not batch:
            return 0
        start_s = time.perf_counter()
        output = self.engine.process({stream: q.chunk.audio for stream, q in batch.items()})
        stats = self.stats
        stats.step_ms.add((time.perf_counter() - start_s) * 1e3)
        stats.batch_size.add(len(batch))
        stats.steps += 1
        for stream in output.reset_streams:
            stats.streams[stream].resets += 1
        for stream, queued in batch.items():
            stats.wait_ms.add((start_s - queued.queued_s) * 1e3)
            stats.streams[stream].hints += 1
            self._sink(stream, Chunk(queued.chunk.stamp_ns, output.audio[stream]))
        return len(batch)
