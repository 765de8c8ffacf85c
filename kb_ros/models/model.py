"""
``StreamingModel``: the one network class behind the small, kb, medium and large presets.

Filterbank (``filterbank``) -> causal conv encoder -> grid blocks, with hint fusions after some
of them (``blocks``) -> causal conv decoder to the complex output spectrum -> overlap-add. The
same ``forward`` serves training (whole sequences) and streaming (one 128-sample chunk per call
with the returned state): the two are equal to rounding error.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kb_ros.models.blocks import CausalConv2d, HintEncoder, HintFusion, make_block
from kb_ros.models.config import ModelConfig
from kb_ros.models.filterbank import (HOP, LOOKAHEAD, N_FREQS, StftAnalysis, StftSynthesis,
                                      spectral_features)
from kb_ros.models.state import State


class StreamingModel(nn.Module):
    """
    Causal streaming TF-GridNet-style enhancer/separator, optionally fusing hint audio.

    Its blocks are plain grid blocks or, with ``config.groups`` > 1, GroupComm blocks.

    ``forward(mix, used_hint, hint_age, state)``:

    - ``mix [B, C_in, N]``, N a multiple of ``HOP``; T = N / HOP steps.
    - ``used_hint [B, S, N]``: slice ``t*HOP:(t+1)*HOP`` is the large model's output audio for
      chunk ``t - hint_age[b, t]``, the hint used at step t. ``hint_age [B, T]`` is in
      ``[min_age, max_age]`` or -1 (no hint: the slice is ignored). Both None = no hints at all.
      Models without fusion ignore hints.
    - ``state``: None at the start of a stream, else the state returned by the previous call.

    Returns ``(out [B, S, N], state)``; ``out`` is the estimate delayed by ``LOOKAHEAD`` samples.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.emb_dim
        self.analysis = StftAnalysis()
        self.synthesis = StftSynthesis()
        self.encoder = CausalConv2d(2 * config.in_channels, dim, (3, 3))
        self.blocks = nn.ModuleList(make_block(config, N_FREQS) for _ in range(config.n_blocks))
        self.fusions = nn.ModuleList(HintFusion(config, N_FREQS) for _ in config.fusion_after)
        self.hint_encoder = HintEncoder(config) if config.uses_hints else None
        self.decoder = CausalConv2d(dim, 2 * config.n_sources, (3, 3))

    def initial_state(self, batch: int, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> State:
        """Return the state at the start of a stream: silence before it, empty memories."""
        param = next(self.parameters())
        like = param.new_zeros((1, N_FREQS, 1), device=device or param.device,
                               dtype=dtype or param.dtype)
        cfg = self.config
        return State(
            analysis=like.new_zeros(batch, cfg.in_channels, LOOKAHEAD),
            synthesis=like.new_zeros(batch, cfg.n_sources, LOOKAHEAD),
            encoder=like.new_zeros(batch, 2, N_FREQS, 2 * cfg.in_channels),
            decoder=like.new_zeros(batch, 2, N_FREQS, cfg.emb_dim),
            blocks=[block.initial_state(batch, like) for block in self.blocks],
            fusions=[fusion.initial_state(batch, like) for fusion in self.fusions],
        )

    def forward(self, mix: Tensor, used_hint: Tensor | None = None,
                hint_age: Tensor | None = None,
                state: State | None = None) -> tuple[Tensor, State]:
        age = self.check_inputs(mix, used_hint, hint_age)
        if state is None:
            state = self.initial_state(mix.shape[0], mix.device, mix.dtype)
        return self.forward_unchecked(mix, None if age is None else used_hint, age, state)

    def check_inputs(self, mix: Tensor, used_hint: Tensor | None,
                     hint_age: Tensor | None) -> Tensor | None:
        """
        Validate one call's inputs (``ValueError`` if wrong).

        Returns the hint ages as int64, or None when no hint is used (no fusion, or no hint
        given).
        """
        batch, channels, n_samples = mix.shape
        cfg = self.config
        if channels != cfg.in_channels or n_samples % HOP:
            raise ValueError(f"mix must be [B, {cfg.in_channels}, k*{HOP}], got {list(mix.shape)}")
        if self.hint_encoder is None or (used_hint is None and hint_age is None):
            return None
        if used_hint is None or hint_age is None:
            raise ValueError("used_hint and hint_age must be given together")
        if tuple(used_hint.shape) != (batch, cfg.n_sources, n_samples):
            raise ValueError(f"used_hint must be [{batch}, {cfg.n_sources}, {n_samples}], "
                             f"got {list(used_hint.shape)}")
        if tuple(hint_age.shape) != (batch, n_samples // HOP) or hint_age.is_floating_point():
            raise ValueError(f"hint_age must be an integer [{batch}, {n_samples // HOP}] tensor")
        # one conversion instead of several tensor ops: cheaper for a streaming step
        if any(a != -1 and not cfg.min_age <= a <= cfg.max_age
               for a in hint_age.flatten().tolist()):
            raise ValueError(f"hint ages must be -1 or in [{cfg.min_age}, {cfg.max_age}]")
        return hint_age.long()

    def forward_unchecked(self, mix: Tensor, used_hint: Tensor | None, hint_age: Tensor | None,
                          state: State) -> tuple[Tensor, State]:
        """
        ``forward`` without input checks, for callers that ran ``check_inputs``.

        Also for tracing: no Python-side tensor inspection happens here.
        """
        hint = (self.hint_encoder(used_hint, hint_age) if self.hint_encoder is not None
                and used_hint is not None and hint_age is not None else None)
        spec, analysis = self.analysis(mix, state.analysis)
        x, encoder = self.encoder(spectral_features(spec, self.config.compress_exponent),
                                  state.encoder)
        block_states, fusion_states = [], []
        fusions = iter(zip(self.fusions, state.fusions))
        for index, (block, block_state) in enumerate(zip(self.blocks, state.blocks)):
            x, block_state = block(x, block_state)
            block_states.append(block_state)
            if index in self.config.fusion_after:
                fusion, fusion_state = next(fusions)
                x, fusion_state = fusion(x, hint, fusion_state)
                fusion_states.append(fusion_state)
        y, decoder = self.decoder(x, state.decoder)  # [B, T, F, S*2]
        spec = y.unflatten(-1, (self.config.n_sources, 2)).permute(0, 3, 1, 4, 2).flatten(-2)
        out, synthesis = self.synthesis(spec, state.synthesis)
        return out, State(analysis, synthesis, encoder, decoder, block_states, fusion_states)
