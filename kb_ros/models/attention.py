"""
Causal local attention over frames, shared by the large model and the hint fusion.

TF-GridNet style: each frequency bin is projected to a small per-head dimension and the bins are
flattened, so one attention weight per (query frame, memory frame) mixes whole spectra. Every
memory frame carries an ``offset`` added to its frame distance to give its relative position: 0
for self-attention, the hint's age for fusion memory (so the position is ``t - j`` with ``j``
the hinted chunk), and ``EMPTY`` for a slot with nothing in it. Positions index a learned bias
per head; every position that must not be seen (empty, outside the window, in the future) maps
to one extra row of -inf, so masking costs no extra ops. Streaming and full-sequence calls run
the same code: the cache of the last ``window - 1`` frames is prepended to the new frames. A
streaming step may instead be given the cache as a ``KVRing`` that its caller writes in place
(``kb_ros.models.ring``), which spares copying the whole cache every chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kb_ros.models.state import KVCache, KVRing

QUERY_BLOCK = 256  # queries per score matrix: bounds memory on long offline sequences
EMPTY = 1 << 20  # offset of an empty memory slot: beyond every real relative position


class LocalAttention(nn.Module):
    """
    Multi-head attention of each frame over the last ``window`` memory frames.

    With ``null_slot`` a learned key with a zero value (one per head and bin) is always
    present, so a query with no valid memory (no hint yet) still has a defined output. It sits
    in front of the memory as slot 0 with its own bias row, so the null path costs no extra ops.
    """

    def __init__(self, dim: int, n_freqs: int, heads: int, qk_dim: int, window: int,
                 max_offset: int = 0, null_slot: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.qk_dim, self.v_dim = heads, qk_dim, dim // heads
        self.n_freqs, self.window = n_freqs, window
        self.n_positions = window + max_offset  # relative positions 0 .. window-1+max_offset
        # no pre-norm: queries and keys are normalised per head over all bins after projection
        self.to_query = nn.Linear(dim, heads * qk_dim)
        self.to_memory = nn.Linear(dim, heads * (qk_dim + self.v_dim))  # per head: key, value
        self.proj = nn.Linear(dim, dim)
        # one learned bias per head and relative position; row n_positions is the null slot's
        self.position_bias = nn.Parameter(torch.zeros(self.n_positions + 1, heads))
        self.null_slots = int(null_slot)
        # distances in the band of a block of queries over [null slot,] its memory: query q
        # sits at memory index q + window - 1; unseen frames get EMPTY, the null slot its row
        distance = (torch.arange(QUERY_BLOCK)[:, None] + (window - 1)
                    - torch.arange(QUERY_BLOCK + window - 1))
        distance[(distance < 0) | (distance >= window)] = EMPTY
        if null_slot:
            distance = torch.cat([torch.full((QUERY_BLOCK, 1), self.n_positions), distance], 1)
            # shaped [1, heads, 1, F*size] like one memory frame: expanded, never copied
            self.null_key = nn.Parameter(torch.zeros(1, heads, 1, n_freqs * qk_dim))
            # a zero, untrained value: attending to the null slot means "take less of the
            # memory", never "add a learned constant", which training would otherwise prefer to
            # the memory's content (it routes all attention there within a few hundred steps)
            self.register_buffer("null_value", torch.zeros(1, heads, 1, n_freqs * self.v_dim),
                                 persistent=False)
        else:
            self.register_parameter("null_key", None)
            self.register_parameter("null_value", None)
        self.register_buffer("distance", distance, persistent=False)
        # the 1/sqrt(d) score scale, applied as the query normalisation's weight (one op less)
        qk_size = n_freqs * qk_dim
        self.register_buffer("query_scale", torch.full((qk_size,), qk_size ** -0.5),
                             persistent=False)

    def _split_heads(self, x: Tensor, size: int) -> Tensor:
        """``[B, T, F, heads*size]`` -> ``[B, heads, T, F*size]``."""
        return x.unflatten(-1, (self.heads, size)).permute(0, 3, 1, 2, 4).flatten(-2)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys ``[B, heads, T, F*qk_dim]`` and values ``[B, heads, T, F*v_dim]`` of frames."""
        both = self.to_memory(memory).unflatten(-1, (self.heads, -1)).permute(0, 3, 1, 2, 4)
        keys, values = both.split([self.qk_dim, self.v_dim], dim=-1)
        keys = keys.flatten(-2)
        return F.layer_norm(keys, keys.shape[-1:]), values.flatten(-2)

    def empty(self, batch: int, frames: int, like: Tensor) -> KVCache:
        """``frames`` empty memory slots (masked out), with ``like``'s dtype and device."""
        keys = like.new_zeros(batch, self.heads, frames, self.n_freqs * self.qk_dim)
        values = like.new_zeros(batch, self.heads, frames, self.n_freqs * self.v_dim)
        offsets = torch.full((batch, frames), EMPTY, dtype=torch.long, device=like.device)
        return KVCache(keys, values, offsets)

    def forward(self, x: Tensor, new: KVCache,
                cache: KVCache | KVRing) -> tuple[Tensor, KVCache]:
        """
        Attend from frames ``x [B, T, F, D]`` over memory = ``cache`` + ``new`` (T frames).

        Query t sees the memory frames at distance ``0 .. window-1`` (itself included).
        Returns the projected attention output ``[B, T, F, D]`` (no residual) and the cache;
        given a ``KVRing`` (one frame only), the cache returned is ``new``, for the caller to
        write into the ring.
        """
        batch, frames = x.shape[:2]
        query = self._split_heads(self.to_query(x), self.qk_dim)
        query = F.layer_norm(query, query.shape[-1:], self.query_scale)
        if isinstance(cache, KVRing):
            if frames != 1:
                raise ValueError(f"a KVRing takes one frame per call, got {frames}")
            return self._output(self._attend_ring(query, new, cache)), new
        keys, values, offsets = [cache.keys, new.keys], [cache.values, new.values], \
            [cache.offsets, new.offsets]
        if self.null_key is not None:
            keys.insert(0, self.null_key.expand(batch, -1, -1, -1))
            values.insert(0, self.null_value.expand(batch, -1, -1, -1))
            offsets.insert(0, new.offsets.new_zeros(batch, 1))
        keys, values = torch.cat(keys, dim=2), torch.cat(values, dim=2)
        offsets = torch.cat(offsets, dim=1)
        tail = self.null_slots + frames
        cache = KVCache(keys.narrow(2, tail, keys.shape[2] - tail),
                        values.narrow(2, tail, keys.shape[2] - tail),
                        offsets.narrow(1, tail, keys.shape[2] - tail))
        if frames <= QUERY_BLOCK:
            out = self._attend(query, keys, values, offsets)
        else:
            out = torch.cat([self._attend(query[:, :, a:a + QUERY_BLOCK], self._band(keys, a, 2),
                                          self._band(values, a, 2), self._band(offsets, a, 1))
                             for a in range(0, frames, QUERY_BLOCK)], dim=2)
        return self._output(out), cache

    def _output(self, out: Tensor) -> Tensor:
        """``[B, heads, T, F*v_dim]`` -> the projected ``[B, T, F, D]``."""
        out = out.unflatten(-1, (self.n_freqs, self.v_dim)).permute(0, 2, 3, 1, 4).flatten(-2)
        return self.proj(out)

    def _band(self, memory: Tensor, start: int, dim: int) -> Tensor:
        """Return [the null slot and] the memory frames queries ``start .. +QUERY_BLOCK`` see."""
        nulls = self.null_slots
        length = min(QUERY_BLOCK + self.window - 1, memory.shape[dim] - nulls - start)
        frames = memory.narrow(dim, nulls + start, length)
        return torch.cat([memory.narrow(dim, 0, nulls), frames], dim) if nulls else frames

    def _attend(self, query: Tensor, keys: Tensor, values: Tensor, offsets: Tensor) -> Tensor:
        """
        Attend queries ``[B, h, Q, .]`` over the band of memory frames.

        The band is ``[null,] Q + window - 1`` memory frames.
        """
        position = (self.distance[:query.shape[2], :keys.shape[2]] + offsets.unsqueeze(1)
                    ).clamp(max=self.n_positions + 1)  # [B, Q, M]; n_positions + 1: unseen
        bias = self._bias_table()[position].permute(0, 3, 1, 2)  # [B, h, Q, M]
        return (query @ keys.transpose(-1, -2) + bias).softmax(dim=-1) @ values

    def _attend_ring(self, query: Tensor, new: KVCache, ring: KVRing) -> Tensor:
        """
        Attend one query frame ``[B, h, 1, .]`` over [the null slot,] the ring and ``new``.

        The ring is only read: scores and weighted values are taken per part, so no memory is
        copied to join it with the new frame (the null slot's value is zero: it adds nothing).
        """
        scores = [query @ ring.keys.transpose(-1, -2), query @ new.keys.transpose(-1, -2)]
        positions = [ring.positions, new.offsets]  # the new frame is at distance 0
        if self.null_key is not None:
            scores.insert(0, query @ self.null_key.transpose(-1, -2))
            positions.insert(0, torch.full_like(new.offsets, self.n_positions))
        position = torch.cat(positions, dim=1).clamp(max=self.n_positions + 1)  # [B, M]
        bias = self._bias_table()[position].permute(0, 2, 1).unsqueeze(2)  # [B, h, 1, M]
        weights = (torch.cat(scores, dim=-1) + bias).softmax(dim=-1)
        slots = ring.keys.shape[2]
        on_ring = weights.narrow(-1, self.null_slots, slots)
        on_new = weights.narrow(-1, self.null_slots + slots, 1)
        return on_ring @ ring.values + on_new * new.values

    def _bias_table(self) -> Tensor:
        """Position bias rows, plus a last row of -inf for every position that is not seen."""
        return F.pad(self.position_bias, (0, 0, 0, 1), value=float("-inf"))
