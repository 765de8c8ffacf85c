"""
The live chunk pipeline, run offline in one process on a simulated chunk clock.

Large model -> emulated link -> HintMatcher -> small model, chunk by chunk, exactly as the
nodes do it, but deterministic and as fast as the models allow: for evaluation, bag replay and
the demo's "small alone" baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kb_ros.audio.clock import CHUNK_FRAMES, ChunkClock
from kb_ros.boosting.engine import ChunkEngine
from kb_ros.boosting.hint_matcher import HintCounters, HintMatcher
from kb_ros.transport.emulated_link import EmulatedLink, LinkProfile


@dataclass
class PipelineResult:
    """Output audio ``[frames, sources]`` (delayed by the model's output delay) and counters."""

    enhanced: np.ndarray
    hints: np.ndarray | None
    counters: HintCounters | None
    compute_ms: dict


def run_pipeline(mix: np.ndarray, small: ChunkEngine, large: ChunkEngine | None = None, *,
                 link: LinkProfile | None = None, hint_producer: str | None = None,
                 start_ns: int = 1_000_000_000, same_chunk_hints: bool = False) -> PipelineResult:
    """
    Stream ``mix`` ``[frames, channels]`` through the pipeline, one chunk per 8 ms step.

    Chunk t is processed at the end of chunk t with the hints that arrived before; hint t
    leaves then and arrives after the link's delay. A total delay of D >= 1 chunks thus gives
    hints of age exactly D (a zero delay gives age 1: the device never waits for a hint).
    ``same_chunk_hints`` runs the large model on chunk t before the small model, so a zero delay
    gives age 0: the paper's D = 0, a device that waits for the workstation (evaluation only).
    """
    pad = -len(mix) % CHUNK_FRAMES
    mix = np.concatenate([mix, np.zeros((pad, mix.shape[1]), np.float32)]).astype(np.float32)
    n_chunks = len(mix) // CHUNK_FRAMES
    clock = ChunkClock(start_ns)
    matcher = channel = None
    if large is not None and small.uses_hints:
        cfg = small.model.config
        matcher = HintMatcher(cfg.min_age, cfg.max_age, sources=small.sources,
                              accepted_producers=None)
        channel = EmulatedLink(link or LinkProfile())
    enhanced = np.zeros((len(mix), small.sources), np.float32)
    hints = np.zeros((len(mix), large.sources), np.float32) if large is not None else None

    def send_hint(k: int, frames: slice, now_ns: int) -> None:
        if hints is not None:
            hints[frames] = large.process(mix[frames])
            if channel is not None:
                channel.offer((clock.stamp_ns(k), hints[frames]), now_ns)

    for k in range(n_chunks):
        frames = slice(k * CHUNK_FRAMES, (k + 1) * CHUNK_FRAMES)
        chunk = mix[frames]
        now_ns = clock.stamp_ns(k + 1)
        if same_chunk_hints:
            send_hint(k, frames, now_ns)
        if channel is not None:
            for stamp_ns, audio in channel.due(now_ns):
                matcher.offer(stamp_ns, audio, hint_producer)
        hint = matcher.on_chunk(clock.stamp_ns(k), chunk) if matcher is not None else None
        enhanced[frames] = small.process(chunk, hint)
        if not same_chunk_hints:
            send_hint(k, frames, now_ns)
    return PipelineResult(enhanced, hints, matcher.counters if matcher else None,
                          small.counters.compute_ms.summary())
