"""
The per-chunk engine: one model step per 8 ms chunk, with explicit streaming state.

Used unchanged by the nodes (live), by offline evaluation and by bag replay, so every path runs
the same code. The model's state lives in the engine's one-stream stepper
(``kb_ros.models.stream``); it never waits for a hint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from kb_ros.boosting.hint_matcher import MatchedHint
from kb_ros.boosting.limiter import DEFAULT_OUTPUT_MARGIN_DB, OutputLimiter
from kb_ros.boosting.stats import LatencyStats
from kb_ros.models.model import StreamingModel
from kb_ros.models.stream import build_stream


@dataclass
class EngineCounters:
    chunks: int = 0
    boosted: int = 0
    non_finite_outputs: int = 0
    compute_ms: LatencyStats = field(default_factory=LatencyStats)


class ChunkEngine:
    """
    Runs a ``StreamingModel`` chunk by chunk on float32 ``[frames, channels]`` audio.

    Input channels are adapted to what the model was trained on (mixed down or repeated).
    The output is made safe: a non-finite model output is replaced by silence and the model
    state is reset (counted); an ``OutputLimiter`` keeps it within ``output_margin_db`` of the
    input it estimates and within full scale (None turns it off: raw model output, clipped).
    ``runtime`` picks how a step runs (``kb_ros.models.stream.build_stream``): ``auto`` is
    ONNX Runtime when it can be used, else TorchScript; ``runtime_note`` says why it fell back.
    """

    def __init__(self, model: StreamingModel, *, threads: int = 1, runtime: str = "auto",
                 output_margin_db: float | None = DEFAULT_OUTPUT_MARGIN_DB) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self.model = model.eval()
        self._stream, self.runtime_note = build_stream(model, runtime, max(threads, 1))
        self.runtime = self._stream.runtime
        cfg = model.config
        self.in_channels = cfg.in_channels
        self.sources = cfg.n_sources
        self.chunk_frames = 128
        self.counters = EngineCounters()
        self.limiter = OutputLimiter(output_margin_db) if output_margin_db is not None else None
        self._warm_up()

    def _warm_up(self, steps: int = 5) -> None:
        """
        Run a few silent chunks before the stream starts.

        TorchScript optimises on its first calls, which would otherwise make the first real
        chunks of a stream late.
        """
        silence = np.zeros((self.chunk_frames, self.in_channels), np.float32)
        hint = MatchedHint(0, np.zeros((self.chunk_frames, self.sources), np.float32),
                           getattr(self.model.config, "min_age", 1))
        for _ in range(steps):
            self.process(silence)
            self.process(silence, hint)
        self.reset()
        self.counters = EngineCounters()
        if self.limiter is not None:
            self.limiter.reset()

    @property
    def uses_hints(self) -> bool:
        return bool(getattr(self.model.config, "max_age", 0))

    def reset(self) -> None:
        """Forget the stream (start of a new stream or after a non-finite output)."""
        self._stream.reset()

    def process(self, chunk: np.ndarray, hint: MatchedHint | None = None) -> np.ndarray:
        """One input chunk ``[128, channels]`` in, one output chunk ``[128, sources]`` out."""
        t0 = time.perf_counter()
        mix = adapt_channels(chunk, self.in_channels)
        if hint is not None and self.uses_hints:
            result = self._stream(mix, hint.audio, hint.age_chunks)
            self.counters.boosted += 1
        else:
            result = self._stream(mix)
        if not np.isfinite(result).all():
            self.counters.non_finite_outputs += 1
            self.reset()
            result = np.zeros_like(result)
        if self.limiter is not None:
            result = self.limiter.process(result, mix)
        np.clip(result, -1.0, 1.0, out=result)
        self.counters.chunks += 1
        self.counters.compute_ms.add((time.perf_counter() - t0) * 1e3)
        return result


def adapt_channels(chunk: np.ndarray, in_channels: int) -> np.ndarray:
    """Fit ``[frames, channels]`` audio to a model's input channels: mix down or repeat."""
    if chunk.shape[1] == in_channels:
        return chunk
    if in_channels == 1:
        return chunk.mean(axis=1, keepdims=True)
    return np.repeat(chunk[:, :1], in_channels, axis=1)
