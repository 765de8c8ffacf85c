"""
Explicit streaming state: everything a model carries from one call to the next.

``forward`` never mutates a state; it returns a new one. A caller can therefore keep, copy,
rewind or batch states freely, and training can detach them for truncated backpropagation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from torch import Tensor

_T = TypeVar("_T")


def map_tensors(obj: _T, fn: Callable[[Tensor], Tensor]) -> _T:
    """Apply ``fn`` to every tensor inside nested state dataclasses and lists."""
    if isinstance(obj, Tensor):
        return fn(obj)  # type: ignore[return-value]
    if isinstance(obj, list):
        return [map_tensors(item, fn) for item in obj]  # type: ignore[return-value]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **changes)
    return obj


def flatten_tensors(obj: object) -> tuple[Tensor, ...]:
    """Return the tensors inside nested state dataclasses, in a fixed (field) order."""
    found: list[Tensor] = []
    map_tensors(obj, lambda t: found.append(t) or t)
    return tuple(found)


def unflatten_tensors(template: _T, tensors: Sequence[Tensor]) -> _T:
    """``template`` with its tensors replaced, in ``flatten_tensors`` order."""
    it = iter(tensors)
    return map_tensors(template, lambda _: next(it))


@dataclass
class KVCache:
    """
    Keys/values of the last ``window - 1`` memory frames of a ``LocalAttention``.

    ``offsets[b, i]`` is added to the frame distance to form the relative position (0 for
    self-attention, the hint's age for fusion memory); ``attention.EMPTY`` marks an empty slot.
    """

    keys: Tensor  # [B, heads, window - 1, qk_dim * F]
    values: Tensor  # [B, heads, window - 1, v_dim * F]
    offsets: Tensor  # [B, window - 1] int64


@dataclass
class KVRing:
    """
    A ``KVCache`` as a ring its owner writes in place (``kb_ros.models.ring``): slots in any order.

    ``positions[b, i]`` is slot i's full relative position to the next query (frame distance
    plus offset); a step given a ring returns only the new frame's ``KVCache`` to write.
    """

    keys: Tensor  # [B, heads, window - 1, qk_dim * F]
    values: Tensor  # [B, heads, window - 1, v_dim * F]
    positions: Tensor  # [B, window - 1] int64


@dataclass
class BlockState:
    """Time-LSTM state of one grid block (``[B*F, H]`` each) and its attention cache."""

    h: Tensor
    c: Tensor
    attention: KVCache | KVRing | None


@dataclass
class FusionState:
    """Own-feature FIFO ``[B, max_age, F, D]`` for alignment, and the merged-frame memory."""

    fifo: Tensor
    memory: KVCache | KVRing


@dataclass
class State:
    """Complete streaming state of a ``StreamingModel``."""

    analysis: Tensor  # [B, C, LOOKAHEAD] last input samples (history of the next frame)
    synthesis: Tensor  # [B, S, LOOKAHEAD] overlap-add tail
    encoder: Tensor  # [B, 2, F, 2*C] previous input-conv frames
    decoder: Tensor  # [B, 2, F, D] previous output-conv frames
    blocks: list[BlockState]
    fusions: list[FusionState]

    def map(self, fn: Callable[[Tensor], Tensor]) -> "State":
        """Return a new state with ``fn`` applied to every tensor (``.to``, ``.clone``, ...)."""
        return map_tensors(self, fn)

    def detach(self) -> "State":
        """Cut the autograd graph (truncated backpropagation through time)."""
        return self.map(Tensor.detach)
