"""
One stream through a compiled step, its state kept by the stepper: what ``ChunkEngine`` runs.

Two steppers with one call, ``stream(mix, hint, age) -> out`` on ``[128, channels]`` numpy
chunks:

- ``BoundOnnxStream``: an ONNX Runtime step with every buffer bound once (IOBinding). A plain
  ``session.run`` converts and checks each input and allocates each output on every call:
  about 0.25 ms of a 0.7 ms kb step on this project's VM. Bound, a chunk is one native call:
  the chunk is copied into a bound input, the state ping-pongs between two bound buffer sets
  (the graph reads one and writes the other), and the output lands in a bound buffer.
- ``StoredStream``: any ``FlatStep`` (TorchScript, eager, or ONNX Runtime with rings), its state
  in a ``StateStore``.

``build_stream`` gives the bound one where it can (a device model on ONNX Runtime: the large
model's caches are rings), else the stored one. Bound, the kb step takes about half the CPU time
of ``session.run`` (``kb-ros bench``'s trace ablation). The cpu_overload fault scenario (busy
loops on small_node's core) once seemed to fail more often with it; alone on the machine it
passed 14 of 14 runs either way, and with other work on the machine both failed now and then.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kb_ros.models.filterbank import HOP
from kb_ros.models.model import StreamingModel
from kb_ros.models.onnx_step import OnnxStep, build_step
from kb_ros.models.ring import StateStore, rings_pay
from kb_ros.models.traced import FlatStep

_ONE = (0,)  # the one stream of a StoredStream's StateStore


class StoredStream:
    """One stream on any ``FlatStep``; its state lives in a one-stream ``StateStore``."""

    def __init__(self, step: FlatStep) -> None:
        self.step, self.runtime = step, step.runtime
        cfg = step.model.config
        self._store = StateStore(step.initial_state(), step.rings, 1)
        self._mix = torch.zeros(1, cfg.in_channels, HOP)
        self._hint = torch.zeros(1, cfg.n_sources, HOP)
        self._age = torch.full((1, 1), -1, dtype=torch.long)

    def reset(self) -> None:
        """Start a new stream: the state of silence before it."""
        self._store.reset(0)

    def __call__(self, mix: np.ndarray, hint: np.ndarray | None = None,
                 age: int | None = None) -> np.ndarray:
        """Step one chunk ``[128, in_channels]``, with a hint ``[128, sources]`` of ``age``."""
        self._mix[0].copy_(torch.from_numpy(mix.T))
        with torch.inference_mode():
            state = self._store.gather(_ONE)
            if hint is None:
                out, state = self.step(self._mix, None, None, state)
            else:
                self._hint[0].copy_(torch.from_numpy(hint.T))
                self._age[0, 0] = age
                out, state = self.step(self._mix, self._hint, self._age, state)
            self._store.commit(_ONE, state)
        return out[0].T.numpy()


class BoundOnnxStream:
    """One stream on an ``OnnxStep`` (batch 1, no rings) with its buffers bound once."""

    runtime = "onnxruntime"

    def __init__(self, step: OnnxStep) -> None:
        if step.batch != 1 or step.rings:
            raise ValueError("a bound stream takes a batch-1 ONNX step without rings")
        self.step = step
        cfg = step.model.config
        self._min_age, self._max_age = cfg.min_age, cfg.max_age
        self._mix = np.zeros((1, cfg.in_channels, HOP), np.float32)
        self._hint = np.zeros((1, cfg.n_sources, HOP), np.float32)
        self._age = np.full((1, 1), -1, np.int64)
        self._initial = [tensor.numpy() for tensor in step.initial_state()]
        # state buffer set p is read by the steps of parity p and written by the others
        self._states = [[array.copy() for array in self._initial] for _ in range(2)]
        self._outs = [np.zeros((1, cfg.n_sources, HOP), np.float32) for _ in range(2)]
        self._graphs = {hinted: (session, [self._bind(session, names, hinted, parity)
                                           for parity in range(2)])
                        for hinted, (session, names) in step.sessions().items()}
        self._parity = 0

    def _bind(self, session: Any, names: list[str], hinted: bool, parity: int) -> Any:
        binding = session.io_binding()
        inputs = [self._mix, self._hint, self._age] if hinted else [self._mix]
        for name, array in zip(names, inputs + self._states[parity]):
            binding.bind_ortvalue_input(name, self.step.bindable(array))
        outputs = [self._outs[parity]] + self._states[1 - parity]
        for node, array in zip(session.get_outputs(), outputs):
            binding.bind_ortvalue_output(node.name, self.step.bindable(array))
        return binding

    def reset(self) -> None:
        """Start a new stream: the state of silence before it."""
        for buffer, initial in zip(self._states[self._parity], self._initial):
            np.copyto(buffer, initial)

    def __call__(self, mix: np.ndarray, hint: np.ndarray | None = None,
                 age: int | None = None) -> np.ndarray:
        """Step one chunk ``[128, in_channels]``, with a hint ``[128, sources]`` of ``age``."""
        np.copyto(self._mix[0], mix.T)
        hinted = hint is not None and True in self._graphs
        if hinted:
            if age is None or not self._min_age <= age <= self._max_age:
                raise ValueError(f"hint ages must be in [{self._min_age}, {self._max_age}], "
                                 f"got {age}")
            np.copyto(self._hint[0], hint.T)
            self._age[0, 0] = age
        session, bindings = self._graphs[hinted]
        session.run_with_iobinding(bindings[self._parity])
        out = self._outs[self._parity]
        self._parity ^= 1
        return out[0].T.copy()  # the buffer is written again two chunks on


def build_stream(model: StreamingModel, runtime: str = "auto",
                 threads: int = 1) -> tuple[StoredStream | BoundOnnxStream, str]:
    """Return the fastest one-stream stepper ``runtime`` allows and a note on any fallback."""
    step, note = build_step(model, runtime, threads, ring=rings_pay(model.config))
    if isinstance(step, OnnxStep) and step.batch == 1 and not step.rings:
        return BoundOnnxStream(step), note
    return StoredStream(step), note
