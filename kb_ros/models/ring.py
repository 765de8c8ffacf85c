"""
Streaming state kept in place: attention caches as rings, every stream's state preallocated.

A functional step (``StreamingModel.forward``) returns a new state, so each chunk copies every
attention cache: the last ``window - 1`` frames are joined with the new one and the oldest cut
off. For the large model that is 2.7 MB per stream and chunk: 40% of the kernel time of its
step on ONNX Runtime (CPU, batch 8), mostly ``Concat`` and ``Slice``. In ring form the step
reads each cache as a ``KVRing`` and returns only the new frame; a ``StateStore`` writes that
frame over the ring's oldest slot and ages the other slots, in place. Slot order does not
matter to attention: each slot carries its relative position.

The store holds the state of ``max_streams`` streams in one preallocated tensor per state
tensor, so a step over streams ``a .. b`` in a row reads views of it (no copy at all); any
other set of streams is gathered. The output is the same as the functional step's, to float
rounding (the sums run in another order).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from kb_ros.models.config import ModelConfig
from kb_ros.models.state import KVCache, KVRing, State

PackedState = tuple[Tensor, ...]


def ring_state(state: State) -> State:
    """Return ``state`` with every attention cache as a ``KVRing`` (same tensors)."""
    def convert(obj: object) -> object:
        if isinstance(obj, KVCache):  # an empty cache is an empty ring: offsets are EMPTY
            return KVRing(obj.keys, obj.values, obj.offsets)
        if isinstance(obj, list):
            return [convert(item) for item in obj]
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.replace(obj, **{f.name: convert(getattr(obj, f.name))
                                               for f in dataclasses.fields(obj)})
        return obj
    return convert(state)  # type: ignore[return-value]


def rings_pay(config: ModelConfig) -> bool:
    """
    Whether a streaming step of this model should take its caches as rings.

    Measured on this project's VM (one thread, ONNX Runtime): the large model's self-attention
    caches make its step about 20% faster as rings; a kb model's small fusion memory is
    cheaper to copy than to write in place (0.06 ms per chunk).
    """
    return config.attn_heads > 0


def ring_fields(state: State) -> list[int]:
    """Index of each ring's ``keys`` in the flat state (``values`` and ``positions`` follow)."""
    found: list[int] = []
    count = 0

    def walk(obj: object) -> None:
        nonlocal count
        if isinstance(obj, KVRing):
            found.append(count)
        if isinstance(obj, Tensor):
            count += 1
        elif isinstance(obj, list):
            for item in obj:
                walk(item)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name))
    walk(state)
    return found


class StateStore:
    """
    The ring-form state of streams ``0 .. max_streams - 1``, updated in place.

    ``fresh`` is the packed state of one new stream (``FlatStep.initial_state()`` of a ring
    step) and ``rings`` its ``ring_fields``. ``gather(streams)`` gives the packed state of
    those streams for one step; ``commit(streams, new)`` takes the step's returned state.
    A step of every stream keeps its returned tensors as they are (no copy). Writes go through
    numpy views on a CPU (``numpy_writes`` None), else torch indexing (any device).
    """

    def __init__(self, fresh: PackedState, rings: Sequence[int], max_streams: int, *,
                 numpy_writes: bool | None = None) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.max_streams = max_streams
        self._fresh = fresh
        self._device = fresh[0].device
        self._numpy = self._device.type == "cpu" if numpy_writes is None else numpy_writes
        if self._numpy and self._device.type != "cpu":
            raise ValueError("numpy writes need the state on the CPU")
        self._rows = [tensor.shape[0] for tensor in fresh]  # dim-0 rows of one stream
        self._rings = list(rings)
        ring_parts = {index + part for index in self._rings for part in range(3)}
        self._plain = [index for index in range(len(fresh)) if index not in ring_parts]
        self._tensors = [tensor.repeat(max_streams, *[1] * (tensor.dim() - 1))
                         for tensor in fresh]
        # per ring, the slot each of its rows writes next (a stream may own several rows)
        self._cursor = [self._index([0] * len(self._tensors[keys])) for keys in self._rings]

    def reset(self, stream: int) -> None:
        """Give ``stream`` the state of a new stream."""
        with self._writing():
            for index, (fresh, rows) in enumerate(zip(self._fresh, self._rows)):
                self._array(index)[stream * rows:(stream + 1) * rows] = self._as_array(fresh)
            # a ring's cursor may stay where it is: a fresh ring's slots are all empty

    def gather(self, streams: Sequence[int]) -> PackedState:
        """Packed state of ``streams`` (ascending): views when they are in a row, else copies."""
        first, count = streams[0], len(streams)
        if count == self.max_streams:
            return tuple(self._tensors)
        if streams[-1] - first + 1 == count:
            return tuple(tensor[first * rows:(first + count) * rows]
                         for tensor, rows in zip(self._tensors, self._rows))
        return tuple(tensor.index_select(0, self._row_index(streams, rows, torch_index=True))
                     for tensor, rows in zip(self._tensors, self._rows))

    def commit(self, streams: Sequence[int], new: PackedState) -> None:
        """Store a step's returned state: new frames into the rings, the rest replaced."""
        with self._writing():
            if len(streams) == self.max_streams:  # every stream stepped: keep what it made
                for index in self._plain:
                    self._tensors[index] = new[index]
            else:
                for index in self._plain:
                    rows = self._row_index(streams, self._rows[index])
                    self._array(index)[rows] = self._as_array(new[index])
            for keys, cursors in zip(self._rings, self._cursor):
                rows = self._row_index(streams, self._rows[keys])
                cursor = cursors[rows]
                self._array(keys)[rows, :, cursor] = self._as_array(new[keys])[:, :, 0]
                self._array(keys + 1)[rows, :, cursor] = self._as_array(new[keys + 1])[:, :, 0]
                positions = self._array(keys + 2)
                positions[rows] += 1  # every slot is one frame older at the next query
                positions[rows, cursor] = self._as_array(new[keys + 2])[:, 0] + 1
                cursors[rows] = (cursor + 1) % positions.shape[1]

    def _writing(self) -> Any:
        """Torch writes may hit kept step outputs (inference tensors); numpy writes need not."""
        return contextlib.nullcontext() if self._numpy else torch.inference_mode()

    def _as_array(self, tensor: Tensor) -> Any:
        """Return what writes index: on a CPU a numpy view (torch indexing ~10 us, numpy ~1)."""
        return tensor.numpy() if self._numpy else tensor

    def _array(self, index: int) -> Any:
        return self._as_array(self._tensors[index])

    def _index(self, values: Any, torch_index: bool = False) -> Any:
        """Return an index array of the kind writes take (``torch_index``: a torch tensor)."""
        if self._numpy and not torch_index:
            return np.asarray(values, dtype=np.int64)
        return torch.as_tensor(values, dtype=torch.long, device=self._device)

    def _row_index(self, streams: Sequence[int], rows: int, torch_index: bool = False) -> Any:
        """Dim-0 rows of ``streams`` in a state tensor holding ``rows`` per stream."""
        starts = np.asarray(streams, dtype=np.int64)[:, None] * rows
        return self._index((starts + np.arange(rows)).ravel(), torch_index)
