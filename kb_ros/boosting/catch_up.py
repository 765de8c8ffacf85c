"""
CatchUp: keeps a device that fell behind real time on time, one output per input chunk.

A node that gets too little CPU (a busy core, a competing process) falls behind its input. Left
alone, its backlog grows until the input queue is full, and then the middleware drops chunks
silently: output is lost and latency stays at the queue's length. Instead, a chunk that is
processed more than ``max_lag_ms`` behind skips the model: its output is its input, delayed
like the model's output (the look-ahead) and through the gain that best fits the model's
recent output to its input (least squares over about half a second), which costs almost
nothing, so the node catches up. The fit carries the model's level (an enhancer's output is
far quieter than its noisy input: without it, every catch-up would be a jump in loudness) and
its polarity (SI-SNR training does not see the sign, so a checkpoint may output the target
inverted: unmatched, the passed-through input would cancel against the enhanced output around
it; shipping turns device models upright, but any checkpoint path can be loaded).
Once the lag is down to a quarter of ``max_lag_ms`` (hysteresis: few, long catch-ups rather
than a switch every other chunk), the model restarts from a clean state, as at the start of a
stream (its state would otherwise continue from audio it never saw).

Lag is measured against the stream's own best case: latency (now minus the chunk's stamp)
less the smallest latency of the last ``window_s``. That is transport plus compute for live
audio, and it makes the guard work for streams whose stamps are not the node's clock (a bag
replayed with its recorded stamps, a capture clock offset from the device's).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kb_ros.boosting.engine import adapt_channels

BLOCK_CHUNKS = 125  # the best case is kept per second of chunks
RESUME_FRACTION = 0.25  # a catch-up ends when the lag is down to this part of max_lag_ms
FIT_SMOOTHING = 1 / 64  # per chunk: the fitted gain follows about half a second


@dataclass
class CatchUpCounters:
    """What the guard saw and did; exported to diagnostics."""

    deadline_misses: int = 0  # chunks published later than the deadline (lag)
    bypassed: int = 0         # chunks that skipped the model to catch up
    catch_ups: int = 0        # runs of bypassed chunks
    max_lag_ms: float = 0.0


class CatchUp:
    """
    Decides per chunk whether the model may run, and makes the bypass output when it may not.

    ``max_lag_ms`` 0 never bypasses (deadline misses are still counted). ``on_resume`` is
    called before the model takes its first chunk after a catch-up (to reset its state).
    """

    def __init__(self, max_lag_ms: float, deadline_ms: float, delay_frames: int,
                 sources: int, on_resume: Callable[[], None], window_s: float = 10.0) -> None:
        self.max_lag_ms = max_lag_ms
        self.deadline_ms = deadline_ms
        self.sources = sources
        self.counters = CatchUpCounters()
        self._on_resume = on_resume
        self._delay = np.zeros((delay_frames, 1), np.float32)
        self._block_minima: deque[float] = deque(maxlen=max(1, round(window_s)))
        self._block_min = float("inf")
        self._past_min = float("inf")  # the least of _block_minima
        self._block_count = 0
        self._bypassing = False
        self._input_power = 0.0  # smoothed, of the (delayed) input the model ran on
        self._cross_power = 0.0  # smoothed, of that input times what the model made of it
        self._model_input: np.ndarray | None = None  # the chunk the model is running on

    def _lag_ms(self, latency_ms: float) -> float:
        return latency_ms - min(self._block_min, self._past_min)

    def bypass(self, chunk: np.ndarray, latency_ms: float) -> np.ndarray | None:
        """
        Take a chunk that starts processing ``latency_ms`` after its stamp.

        Returns None if the model may process it, else the bypass output: the input mixed to
        mono, delayed by the look-ahead, through the fitted gain, on every source channel.
        """
        self._block_min = min(self._block_min, latency_ms)
        self._block_count += 1
        if self._block_count == BLOCK_CHUNKS:
            self._block_minima.append(self._block_min)
            self._past_min = min(self._block_minima)
            self._block_min, self._block_count = float("inf"), 0
        mono = adapt_channels(chunk, 1)
        delayed = np.concatenate([self._delay, mono])
        if len(self._delay):
            self._delay = mono[-len(self._delay):].copy()
        lag = self._lag_ms(latency_ms)
        limit = self.max_lag_ms * (RESUME_FRACTION if self._bypassing else 1.0)
        if not 0 < limit < lag:
            if self._bypassing:
                self._bypassing = False
                self._on_resume()
            self._model_input = delayed[:len(mono)]
            return None
        self.counters.bypassed += 1
        self.counters.catch_ups += not self._bypassing
        self._bypassing = True
        self._model_input = None
        passed = np.clip(self.gain * delayed[:len(mono)], -1.0, 1.0)  # F32 input may exceed it
        return np.repeat(passed, self.sources, axis=1)

    @property
    def gain(self) -> float:
        """The least-squares gain from the model's delayed input to its output, in [-1, 1]."""
        if self._input_power <= 0:
            return 1.0
        return float(np.clip(self._cross_power / self._input_power, -1.0, 1.0))

    def published(self, output: np.ndarray, latency_ms: float) -> None:
        """Take note of a published chunk: the model's fit, and a deadline miss if it is late."""
        if self._model_input is not None:
            x, y = self._model_input, adapt_channels(output, 1)
            frames = len(x)
            self._input_power += FIT_SMOOTHING * (float(np.vdot(x, x)) / frames
                                                  - self._input_power)
            self._cross_power += FIT_SMOOTHING * (float(np.vdot(x, y)) / frames
                                                  - self._cross_power)
        lag = self._lag_ms(latency_ms)
        self.counters.max_lag_ms = max(self.counters.max_lag_ms, round(lag, 2))
        if lag > self.deadline_ms:
            self.counters.deadline_misses += 1
