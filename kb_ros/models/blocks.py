"""
Causal TF-GridNet building blocks and the hint fusion; features are ``[B, T, F, D]``.

Channels last keeps LayerNorm, Linear and the frequency LSTM free of transposes, and the time
LSTM sees ``[B*F, T, D]``, which for a streaming step (T = 1) is a free reshape.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from kb_ros.models.attention import EMPTY, LocalAttention
from kb_ros.models.config import ModelConfig
from kb_ros.models.filterbank import HintAnalysis, spectral_features
from kb_ros.models.state import BlockState, FusionState, KVCache

GROUP_EXCHANGE_FACTOR = 2  # hidden width of the group exchange, in group widths


class CausalConv2d(nn.Module):
    """
    Conv over (time, freq), causal in time: the last ``kernel[0] - 1`` input frames are state.

    Frequency is zero-padded on both sides (bins are not time).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.context = kernel[0] - 1
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=(0, kernel[1] // 2))

    def forward(self, x: Tensor, past: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``x [B, T, F, C]``, ``past [B, context, F, C]`` (None iff context is 0)."""
        if past is not None:
            x = torch.cat([past, x], dim=1)
            past = x[:, x.shape[1] - self.context:]
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), past


class FrequencyMixer(nn.Module):
    """
    A cheap alternative to the BLSTM across bins: a low-rank map across all bins, then PReLU.

    Every bin sees every other, as through the BLSTM, but in two matrix products that run all
    bins at once instead of a 97-step scan; the map is shared by the channels.
    """

    def __init__(self, n_freqs: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(n_freqs, rank, bias=False)
        self.up = nn.Linear(rank, n_freqs)
        self.activation = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, T, F, D]`` -> same shape."""
        return self.activation(self.up(self.down(x.transpose(-1, -2))).transpose(-1, -2))


class GridBlock(nn.Module):
    """
    Intra-frame path across bins, inter-frame LSTM over time, optional local self-attention.

    Each path is LayerNorm -> sequence model -> linear -> residual; all are causal in time.
    The intra-frame model is the BLSTM or the ``FrequencyMixer``, as ``config.freq_path`` says.
    """

    def __init__(self, config: ModelConfig, n_freqs: int, dim: int | None = None) -> None:
        """``dim``: the block's width, ``config.emb_dim`` unless the block is shared by groups."""
        super().__init__()
        dim, hidden = dim or config.emb_dim, config.lstm_hidden
        self.intra_norm = nn.LayerNorm(dim)
        if config.freq_path == "mixer":
            self.intra_rnn, self.intra_mixer = None, FrequencyMixer(n_freqs, config.freq_hidden)
            self.intra_proj = nn.Linear(dim, dim)
        else:
            self.intra_rnn = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
            self.intra_mixer, self.intra_proj = None, nn.Linear(2 * hidden, dim)
        self.inter_norm = nn.LayerNorm(dim)
        self.inter_rnn = nn.LSTM(dim, hidden, batch_first=True)
        self.inter_proj = nn.Linear(hidden, dim)
        self.attention = (LocalAttention(dim, n_freqs, config.attn_heads, config.attn_qk_dim,
                                         config.attn_window) if config.attn_heads else None)

    def initial_state(self, batch: int, like: Tensor) -> BlockState:
        n_freqs = like.shape[-2]
        zeros = like.new_zeros(batch * n_freqs, self.inter_rnn.hidden_size)
        attention = (None if self.attention is None
                     else self.attention.empty(batch, self.attention.window - 1, like))
        return BlockState(zeros, zeros.clone(), attention)

    def forward(self, x: Tensor, state: BlockState) -> tuple[Tensor, BlockState]:
        batch, frames, n_freqs, dim = x.shape
        y = self.intra_norm(x)
        if self.intra_rnn is not None:
            y = self.intra_rnn(y.reshape(batch * frames, n_freqs, dim))[0]
        else:
            y = self.intra_mixer(y)
        x = x + self.intra_proj(y).view(batch, frames, n_freqs, dim)
        y = self.inter_norm(x).transpose(1, 2)  # [B, F, T, D]
        if frames == 1:  # a streaming step: same weights and math, the cell kernel is 2-3x faster
            rnn = self.inter_rnn
            h, c = torch.lstm_cell(y.reshape(batch * n_freqs, dim), (state.h, state.c),
                                   rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0,
                                   rnn.bias_hh_l0)
            y = h
        else:
            y, (h, c) = self.inter_rnn(y.reshape(batch * n_freqs, frames, dim),
                                       (state.h.unsqueeze(0), state.c.unsqueeze(0)))
            h, c = h[0], c[0]
        x = x + self.inter_proj(y).view(batch, n_freqs, frames, dim).transpose(1, 2)
        cache = None
        if self.attention is not None:
            keys, values = self.attention.project_memory(x)
            offsets = torch.zeros(batch, frames, dtype=torch.long, device=x.device)
            y, cache = self.attention(x, KVCache(keys, values, offsets), state.attention)
            x = x + y
        return x, BlockState(h, c, cache)


class GroupExchange(nn.Module):
    """
    Transform-average-concatenate across groups, per frame and bin: how groups communicate.

    Each group is transformed by one shared layer, the mean over groups is transformed again and
    concatenated to every group, and a last shared layer maps back to the group width (residual).
    That last layer is applied as two halves (own part per group, mean part once, broadcast):
    the same function as on the concatenation, without copying the mean G times.
    Frame-local, so it adds no state and no latency.
    """

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.transform = nn.Sequential(nn.Linear(width, hidden), nn.PReLU())
        self.average = nn.Sequential(nn.Linear(hidden, hidden), nn.PReLU())
        self.from_own = nn.Linear(hidden, width)
        self.from_mean = nn.Linear(hidden, width, bias=False)
        self.activation = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., G, width]`` -> same shape."""
        y = self.transform(self.norm(x))
        mean = self.average(y.mean(dim=-2, keepdim=True))
        return x + self.activation(self.from_own(y) + self.from_mean(mean))


class GroupCommBlock(nn.Module):
    """
    GroupComm block: the D channels as G groups, exchanged, then one grid block shared by all.

    The shared block sees the groups as extra batch entries, so its parameters are those of a
    block of width D/G and its time-LSTM state is ``[B*G*F, H]``: a ``BlockState`` like any
    other. Compute grows with G while parameters do not.
    """

    def __init__(self, config: ModelConfig, n_freqs: int) -> None:
        super().__init__()
        self.groups, width = config.groups, config.group_dim
        self.exchange = GroupExchange(width, GROUP_EXCHANGE_FACTOR * width)
        self.shared = GridBlock(config, n_freqs, dim=width)

    def initial_state(self, batch: int, like: Tensor) -> BlockState:
        return self.shared.initial_state(batch * self.groups, like)

    def forward(self, x: Tensor, state: BlockState) -> tuple[Tensor, BlockState]:
        batch, frames, n_freqs, dim = x.shape
        groups = self.exchange(x.unflatten(-1, (self.groups, -1)))  # [B, T, F, G, W]
        folded = groups.permute(0, 3, 1, 2, 4).reshape(batch * self.groups, frames, n_freqs, -1)
        y, state = self.shared(folded, state)
        y = y.view(batch, self.groups, frames, n_freqs, -1).permute(0, 2, 3, 1, 4)
        return y.reshape(batch, frames, n_freqs, dim), state


def make_block(config: ModelConfig, n_freqs: int) -> GridBlock | GroupCommBlock:
    """Build the block a config asks for: plain, or GroupComm when ``config.groups`` > 1."""
    return GroupCommBlock(config, n_freqs) if config.groups > 1 else GridBlock(config, n_freqs)


class EncodedHint(NamedTuple):
    """Hints for T steps, encoded once and shared by every fusion."""

    embedding: Tensor  # [B, T, F, D] hint features plus age embedding
    index: Tensor  # [B, T, 1, 1] position of x[t - age] in (FIFO + current frames)
    offsets: Tensor  # [B, T] int64: the age, or attention.EMPTY where there is no hint


class HintEncoder(nn.Module):
    """
    Hint audio -> per-bin hint embedding: the device computes the hint's features itself.

    Each step's 128 hint samples -> windowed, zero-padded DFT -> real/imag of S sources (with
    the input's magnitude compression) -> conv over frequency (1x3) to D, plus a learned
    embedding of the hint's age.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.analysis = HintAnalysis()
        self.conv = CausalConv2d(2 * config.n_sources, config.emb_dim, (1, 3))
        self.age_embedding = nn.Embedding(config.max_age + 1, config.emb_dim)
        self.exponent, self.max_age = config.compress_exponent, config.max_age

    def forward(self, hint: Tensor, age: Tensor) -> EncodedHint:
        """``hint [B, S, T*HOP]`` audio, ``age [B, T]`` int64 (validated by the caller)."""
        present = age >= 0
        spec = torch.where(present.unsqueeze(-1).unsqueeze(1), self.analysis(hint), 0.0)
        clamped = age.clamp(min=0)  # no-hint steps are masked in the fusion memory
        embedding = (self.conv(spectral_features(spec, self.exponent))[0]
                     + self.age_embedding(clamped).unsqueeze(2))
        index = torch.arange(age.shape[1], device=age.device) + self.max_age - clamped
        return EncodedHint(embedding, index.view(*index.shape, 1, 1),
                           torch.where(present, age, EMPTY))


class HintFusion(nn.Module):
    """
    The paper's FiLM-with-alignment plus causal cross-attention, for hints of varying age.

    A hint of age a at step t describes chunk j = t - a. FiLM modulates the model's own features
    of that chunk, ``x[j]`` (kept in a FIFO), so hint and features line up: merged =
    ``x[j] * W(h) + B(h)`` with h the hint embedding (age included). Aligned FiLM alone would
    delay the output by a chunks, so the current frame ``x[t]`` queries a memory of recent
    merged frames (relative position ``t - j``) and the result is added to ``x[t]``. A learned
    null slot defines the no-hint path.

    The fusion's output projection starts at zero, so an untrained fusion adds nothing. Left at
    random, the attended frames are noise to the model at first, and training learns to shut
    them out through the null slot (all attention on it within a few hundred steps) before the
    hints' content can show its worth.
    """

    def __init__(self, config: ModelConfig, n_freqs: int) -> None:
        super().__init__()
        dim = config.emb_dim
        self.max_age = config.max_age
        self.film = nn.Linear(dim, 2 * dim)  # scale W(h) and shift B(h)
        with torch.no_grad():
            self.film.bias[:dim] = 1.0  # merged starts close to the aligned features
        self.attention = LocalAttention(dim, n_freqs, config.fusion_heads, config.fusion_qk_dim,
                                        config.memory_frames, max_offset=config.max_age,
                                        null_slot=True)
        with torch.no_grad():  # starts as the identity: see the class docstring
            self.attention.proj.weight.zero_()
            self.attention.proj.bias.zero_()

    def initial_state(self, batch: int, like: Tensor) -> FusionState:
        fifo = like.new_zeros(batch, self.max_age, like.shape[-2], self.film.in_features)
        return FusionState(fifo, self.attention.empty(batch, self.attention.window - 1, like))

    def forward(self, x: Tensor, hint: EncodedHint | None,
                state: FusionState) -> tuple[Tensor, FusionState]:
        """``x [B, T, F, D]``; ``hint`` None when no step has a hint."""
        batch, frames = x.shape[:2]
        history = torch.cat([state.fifo, x], dim=1)  # frames t - max_age .. t
        fifo = history[:, history.shape[1] - self.max_age:]
        if hint is None:
            new = self.attention.empty(batch, frames, x)
        else:
            scale, shift = self.film(hint.embedding).chunk(2, dim=-1)
            merged = torch.addcmul(shift, torch.take_along_dim(history, hint.index, dim=1), scale)
            new = KVCache(*self.attention.project_memory(merged), hint.offsets)
        y, memory = self.attention(x, new, state.memory)
        return x + y, FusionState(fifo, memory)
