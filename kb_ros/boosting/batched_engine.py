"""
One streaming step of a model for many independent streams at once, each with its own state.

A hint server serves several devices with one large model. Running their chunks as one batch
``[B, C, 128]`` amortises the per-op cost of a step over B streams. Streams arrive
asynchronously, so each step holds whichever streams have a chunk: every stream's state lives
in one ``StateStore`` (the large model's attention caches as rings written in place), which
hands a step views of the rows of streams in a row and gathers any other set. Rows of a batch
never mix (every layer of ``StreamingModel`` works per batch row), so a stream's output does
not depend on which other streams share its step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from kb_ros.boosting.engine import adapt_channels
from kb_ros.models.model import StreamingModel
from kb_ros.models.onnx_step import build_batched_steps
from kb_ros.models.ring import StateStore, rings_pay

WARM_UP_STEPS = 3


@dataclass
class BatchOutput:
    """The output chunk ``[128, sources]`` of every stream in a step, and the streams reset."""

    audio: dict[int, np.ndarray]
    reset_streams: list[int]


class BatchedEngine:
    """
    Steps any subset of streams ``0 .. max_streams - 1`` through one model call.

    Outputs are made safe per stream as ``ChunkEngine`` does for one: a stream whose output is
    not finite gets silence and a fresh state (reported in ``BatchOutput.reset_streams``), and
    samples are clipped to full scale; the other streams of the step are untouched. Steps for
    every batch size are built up front (``build_batched_steps``: ONNX Runtime graphs for batch
    1 and for any batch, else a TorchScript trace per size), so no step waits for a compile.
    ``device`` is the torch device of the model and the states (``cpu``, ``cuda``, ``cuda:1``...).
    """

    def __init__(self, model: StreamingModel, max_streams: int, *, threads: int = 1,
                 device: str = "cpu", runtime: str = "auto") -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device {device!r} is not a torch device (cpu, cuda, cuda:N)"
                             ) from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: this torch build or machine has no CUDA")
        if threads > 0:
            torch.set_num_threads(threads)
        self.model = model.to(self.device).eval()
        self.in_channels = model.config.in_channels
        self.sources = model.config.n_sources
        self.chunk_frames = 128
        self.max_streams = max_streams
        self._steps, self.runtime_note = build_batched_steps(
            self.model, max_streams, runtime, max(threads, 1), ring=rings_pay(model.config))
        self.runtime = self._steps[0].runtime
        self._store = self._new_store()
        self._warm_up()

    def _new_store(self) -> StateStore:
        step = self._steps[0]
        return StateStore(step.initial_state(), step.rings, self.max_streams)

    def _warm_up(self) -> None:
        """Run each batch size a few times: TorchScript optimises on its first calls."""
        silence = np.zeros((self.chunk_frames, self.in_channels), np.float32)
        for batch in range(1, self.max_streams + 1):
            for _ in range(WARM_UP_STEPS):
                self.process({stream: silence for stream in range(batch)})
        self._store = self._new_store()

    def reset(self, stream: int) -> None:
        """Forget one stream's past (a new stream, or after a non-finite output)."""
        self._store.reset(stream)

    def process(self, chunks: Mapping[int, np.ndarray]) -> BatchOutput:
        """One chunk ``[128, channels]`` per listed stream in, one output chunk per stream out."""
        streams = tuple(sorted(chunks))
        if not streams or streams[0] < 0 or streams[-1] >= self.max_streams:
            raise ValueError(f"streams must be a non-empty subset of 0..{self.max_streams - 1}, "
                             f"got {list(streams)}")
        mix = np.stack([adapt_channels(chunks[stream], self.in_channels).T
                        for stream in streams])
        if mix.shape[-1] != self.chunk_frames:
            raise ValueError(f"chunks must have {self.chunk_frames} frames, got {mix.shape[-1]}")
        with torch.inference_mode():
            out, new = self._steps[len(streams) - 1](
                torch.from_numpy(mix).to(self.device), None, None, self._store.gather(streams))
            self._store.commit(streams, new)
        audio = out.cpu().numpy().transpose(0, 2, 1)  # [B, frames, sources]
        finite = np.isfinite(audio).all(axis=(1, 2))
        reset_streams = [stream for stream, ok in zip(streams, finite) if not ok]
        if reset_streams:
            audio[~finite] = 0.0
            for stream in reset_streams:
                self.reset(stream)
        np.clip(audio, -1.0, 1.0, out=audio)
        return BatchOutput({stream: audio[row] for row, stream in enumerate(streams)},
                           reset_streams)
