"""Training losses: SI-SNR, and its permutation-invariant form for separation."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from kb_ros.models.filterbank import OUTPUT_DELAY_SAMPLES


def si_snr(est: Tensor, ref: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SNR in dB over the last axis (zero-mean), one value per signal."""
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    proj = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps) * ref
    noise = est - proj
    return 10 * torch.log10((proj.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def pit_si_snr(est: Tensor, ref: Tensor) -> Tensor:
    """
    Mean SI-SNR over sources under the best assignment of estimates to references.

    ``est``, ``ref`` ``[B, S, N]`` -> ``[B]``. A separator cannot know which talker to put on
    which output, so every permutation is scored and the best one counts (utterance-level PIT).
    With one source it is plain SI-SNR.
    """
    sources = est.shape[1]
    if ref.shape[1] != sources:
        raise ValueError(f"{sources} estimates for {ref.shape[1]} references")
    pairwise = si_snr(est.unsqueeze(2), ref.unsqueeze(1))  # [B, S_est, S_ref]
    scores = [pairwise[:, list(order), range(sources)].mean(-1)
              for order in itertools.permutations(range(sources))]
    return torch.stack(scores, dim=-1).amax(dim=-1)


def delayed_pit_si_snr(out: Tensor, clean: Tensor) -> Tensor:
    """``pit_si_snr`` of a model output ``[B, S, N]``, undoing its output delay: ``[B]``."""
    d = OUTPUT_DELAY_SAMPLES
    return pit_si_snr(out[..., d:], clean[..., :clean.shape[-1] - d])
