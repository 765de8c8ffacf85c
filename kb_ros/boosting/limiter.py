"""
OutputLimiter: what the device plays is never louder than what it heard, beyond a margin.

An enhancer removes noise, so its output is quieter than its input (the shipped models run
13-20 dB below it). A glitching model (corrupt weights, input far from its training data) can
instead be far louder, and on a headset that is a hazard. The limiter compares each output
chunk with the input it estimates, ``OUTPUT_DELAY_SAMPLES`` earlier than the chunk the model
just took in, and lowers the gain when the output exceeds that input by more than
``margin_db`` or would pass full scale. Attack is fast but ramped (1 ms raised cosine), release
slow (``release_db_per_s``), so gain changes do not click; output that stays within the margin
passes bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kb_ros.audio.clock import CHUNK_FRAMES, SAMPLE_RATE
from kb_ros.models.filterbank import OUTPUT_DELAY_SAMPLES

DEFAULT_OUTPUT_MARGIN_DB = 6.0
# Input below this level counts as this level: near silence must not mute every output chunk
# (or, in the HintMatcher, reject every hint).
ENERGY_FLOOR_DBFS = -60.0
FULL_SCALE = 1.0


def db_to_power(db: float) -> float:
    return 10.0 ** (db / 10.0)


def split_energy(audio: np.ndarray, delay_frames: int) -> tuple[float, float]:
    """
    Energy (sum of squares, mean over channels) of a chunk's head and of its last ``delay_frames``.

    A model output delayed by ``delay_frames`` covers the previous chunk's tail and this
    chunk's head, so the input a chunk of output estimates is ``tail(k-1) + head(k)``.
    """
    split = len(audio) - delay_frames
    head, tail = audio[:split], audio[split:]
    channels = audio.shape[1]
    return float(np.vdot(head, head)) / channels, float(np.vdot(tail, tail)) / channels


def loudest_energy(audio: np.ndarray) -> float:
    """Energy (sum of squares) of the loudest channel of ``[frames, channels]`` audio."""
    if audio.shape[1] == 1:
        return float(np.vdot(audio, audio))  # a tenth of the general path's cost, per chunk
    return float(np.einsum("fs,fs->s", audio, audio).max())


@dataclass
class LimiterCounters:
    """How often and how deeply the limiter acted; exported to diagnostics."""

    limited_chunks: int = 0
    hard_steps: int = 0  # attacks too sudden to ramp within the bounds: gain set at once
    min_gain_db: float = 0.0


class OutputLimiter:
    """
    Bounds each output chunk ``[frames, sources]`` by the input chunk it belongs to.

    Per chunk, every source's mean power stays within ``margin_db`` of the mean power of the
    input it estimates (at least ``ENERGY_FLOOR_DBFS``), and every sample within full scale.
    """

    def __init__(self, margin_db: float = DEFAULT_OUTPUT_MARGIN_DB, *,
                 release_db_per_s: float = 40.0, attack_frames: int = 16,
                 delay_frames: int = OUTPUT_DELAY_SAMPLES, chunk_frames: int = CHUNK_FRAMES,
                 sample_rate: int = SAMPLE_RATE) -> None:
        if margin_db < 0 or not 0 <= delay_frames < chunk_frames:
            raise ValueError(f"need margin_db >= 0 and 0 <= delay_frames < chunk_frames, got "
                             f"{margin_db}, {delay_frames}, {chunk_frames}")
        if not 0 < attack_frames <= chunk_frames:
            raise ValueError(f"attack_frames must be 1..{chunk_frames}, got {attack_frames}")
        self.margin_db = margin_db
        self.delay_frames = delay_frames
        self.chunk_frames = chunk_frames
        self._allowed_ratio = db_to_power(margin_db)
        self._floor_power = db_to_power(ENERGY_FLOOR_DBFS)
        self._release_step = 10.0 ** (release_db_per_s * chunk_frames / sample_rate / 20.0)
        ramp = np.ones(chunk_frames)
        ramp[:attack_frames] = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, attack_frames + 1)
                                                  / attack_frames)
        self._ramp = ramp
        self.reset()

    def reset(self) -> None:
        """Start a new stream: unity gain, silence before it, counters cleared."""
        self.gain = 1.0
        self._input_tail_energy = 0.0
        self.counters = LimiterCounters()

    def process(self, output: np.ndarray, model_input: np.ndarray) -> np.ndarray:
        """
        Limit one output chunk, given the input chunk ``[frames, channels]`` the model just took.

        Returns ``output`` itself when no gain is applied, else a new array.
        """
        head, tail = split_energy(model_input, self.delay_frames)
        reference = max((self._input_tail_energy + head) / self.chunk_frames, self._floor_power)
        self._input_tail_energy = tail
        allowed_energy = reference * self._allowed_ratio * self.chunk_frames
        loudest = loudest_energy(output)
        peak = max(float(output.max()), -float(output.min()))
        target = 1.0
        if loudest > allowed_energy:
            target = math.sqrt(allowed_energy / loudest)
        if peak * target > FULL_SCALE:
            target = FULL_SCALE / peak
        if target >= 1.0 and self.gain >= 1.0:
            return output
        gains = self._gain_curve(target, output, allowed_energy)
        self.counters.limited_chunks += 1
        self.counters.min_gain_db = min(self.counters.min_gain_db,
                                        20.0 * math.log10(max(float(gains.min()), 1e-12)))
        return (output * gains[:, None]).astype(output.dtype)

    def _gain_curve(self, target: float, output: np.ndarray, allowed_energy: float) -> np.ndarray:
        """
        Per-sample gains for this chunk, ending at the gain the next chunk starts from.

        Release rises at most ``release_db_per_s`` and never above ``target``, so the chunk
        stays within bounds. Attack ramps down over ``attack_frames``, to a gain low enough
        that the ramp itself stays within bounds; if even that cannot hold (the first samples
        alone are too loud) the gain steps at once.
        """
        start = self.gain
        if target >= start:
            end = min(target, start * self._release_step)
            gains = np.linspace(start, end, self.chunk_frames + 1)[1:]
        else:
            end = self._attack_gain(target, output, allowed_energy)
            if end is None:
                self.counters.hard_steps += 1
                end = target
                gains = np.full(self.chunk_frames, target)
            else:
                gains = start + (end - start) * self._ramp
        self.gain = end
        return gains

    def _attack_gain(self, target: float, output: np.ndarray,
                     allowed_energy: float) -> float | None:
        """
        Highest end gain <= ``target`` whose ramp from the current gain meets both bounds.

        Sample n gets ``a_n + g * b_n`` times its value, with ``a = gain * (1 - ramp)`` and
        ``b = ramp``: each source's energy is a quadratic in g, each sample's peak linear.
        """
        fixed = self.gain * (1.0 - self._ramp)
        y = output.astype(np.float64)
        a = fixed[:, None] * y
        b = self._ramp[:, None] * y
        qa, qb = np.square(b).sum(axis=0), (a * b).sum(axis=0)
        qc = np.square(a).sum(axis=0) - allowed_energy
        if np.any(qc > 0):
            return None
        best = target
        sounding = qa > 0
        if sounding.any():
            qa, qb, qc = qa[sounding], qb[sounding], qc[sounding]
            best = min(best, float(((-qb + np.sqrt(qb * qb - qa * qc)) / qa).min()))
        magnitude = np.abs(y).max(axis=1)
        loud = magnitude > 0
        bounds = (FULL_SCALE / magnitude[loud] - fixed[loud]) / self._ramp[loud]
        if len(bounds):
            best = min(best, float(bounds.min()))
        return best if best >= 0 else None
