"""
Which hint the device uses at each step, as training sees it.

One model must serve every link: hints of any age in [min_age, max_age], ages that wander with
jitter, hints missing now and then, and no hints at all. Each training example draws one such
pattern; ``used_hint`` then holds, at step t, the hint audio of chunk ``t - age[t]``. A model
with one age only (``min_age == max_age``, the paper's fixed delay D) is trained as the paper
does: the hint sequence shifted by D, a hint at every step once the stream is D chunks old.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kb_ros.models.config import ModelConfig
from kb_ros.models.filterbank import HOP


@dataclass(frozen=True)
class HintSchedule:
    """How often hints go missing in training: whole examples, and steps within one."""

    p_no_hints: float = 0.15  # share of examples without any hint (the no-hint path)
    p_jitter: float = 0.3  # share of examples whose age wanders by +-1 chunk per step
    max_drop: float = 0.3  # per-example step drop rate, uniform in [0, max_drop]


VARIABLE_AGE = HintSchedule()
FIXED_DELAY = HintSchedule(p_no_hints=0.0, p_jitter=0.0, max_drop=0.0)


def schedule_for(config: ModelConfig) -> HintSchedule:
    """Return the paper's fixed-delay schedule for a one-age model, else the variable-age one."""
    return FIXED_DELAY if config.min_age == config.max_age else VARIABLE_AGE


def sample_hint_ages(batch: int, steps: int, min_age: int, max_age: int,
                     generator: torch.Generator,
                     schedule: HintSchedule = VARIABLE_AGE) -> Tensor:
    """Ages ``[batch, steps]`` (int64, -1 = no hint at that step)."""
    base = torch.randint(min_age, max_age + 1, (batch, 1), generator=generator)
    ages = base.expand(batch, steps).clone()
    jitter = torch.rand(batch, 1, generator=generator) < schedule.p_jitter
    wander = torch.randint(-1, 2, (batch, steps), generator=generator)
    ages = torch.where(jitter, (ages + wander).clamp(min_age, max_age), ages)
    drop_rate = torch.rand(batch, 1, generator=generator) * schedule.max_drop
    ages[torch.rand(batch, steps, generator=generator) < drop_rate] = -1
    ages[torch.rand(batch, generator=generator) < schedule.p_no_hints] = -1
    ages[ages > torch.arange(steps)] = -1  # no hint can predate the stream
    return ages


def gather_used_hint(hint: Tensor, ages: Tensor) -> Tensor:
    """From hint audio ``[B, S, N]`` (chunk j at ``j*HOP``), the audio used at each step."""
    batch, sources, n = hint.shape
    steps = n // HOP
    chunks = hint.reshape(batch, sources, steps, HOP)
    ages = ages.to(hint.device)
    index = torch.where(ages >= 0, torch.arange(steps, device=hint.device) - ages, 0)
    index = index[:, None, :, None].expand(batch, sources, steps, HOP)
    return torch.gather(chunks, 2, index).reshape(batch, sources, n)
