"""
Streaming sample-rate conversion of input topics to the models' 16 kHz, block by block.

Most microphones and foreign bags deliver 44.1 or 48 kHz. The filter is scipy's
``resample_poly`` design (a Kaiser-windowed sinc over the rational ratio), applied causally: a
block's output is ready when the block arrives, so converting adds no waiting for later input,
only the filter's group delay to the audio's content (10 output samples, 0.625 ms, when
downsampling to 16 kHz). Output is stamped from the stamp of the block that completed it, so 8 ms
input blocks keep their stamps one for one, and two nodes converting the same topic (small_node
and hint_node) agree on every chunk stamp even when the publisher's stamps jitter.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy.signal import firwin

from kb_ros.audio.clock import NS_PER_S, STAMP_TOLERANCE_S
from kb_ros.audio.pcm import PcmError

MAX_RATIO_TERM = 1000  # 44.1 kHz -> 16 kHz is 160 / 441; a rate needing more is not a real one
KAISER_BETA = 5.0  # scipy.signal.resample_poly's default window
HALF_LEN_PER_RATE = 10  # as resample_poly: the filter spans 20 periods of the slower side
GATHER_LIMIT = 1 << 20  # input samples gathered at once (4 MB), however large a block is


def resampling_ratio(in_rate: int, out_rate: int) -> tuple[int, int]:
    """Return ``(up, down)`` in lowest terms; PcmError if the ratio is no practical one."""
    ratio = Fraction(out_rate, in_rate)
    if max(ratio.numerator, ratio.denominator) > MAX_RATIO_TERM:
        raise PcmError(f"sample_rate {in_rate} Hz cannot be converted to {out_rate} Hz: "
                       f"the ratio {ratio.numerator}/{ratio.denominator} needs terms up to "
                       f"{MAX_RATIO_TERM} (as 44.1 or 48 kHz do)")
    return ratio.numerator, ratio.denominator


def resampling_filter(up: int, down: int) -> np.ndarray:
    """Return the anti-aliasing low-pass ``resample_poly`` uses for ``up / down``, gain ``up``."""
    max_rate = max(up, down)
    taps = firwin(2 * HALF_LEN_PER_RATE * max_rate + 1, 1.0 / max_rate,
                  window=("kaiser", KAISER_BETA))
    return taps * up


class StreamResampler:
    """
    Converts one stream from ``in_rate`` to ``out_rate``, keeping the filter state between blocks.

    ``push`` returns the output the block completes with the stamp of its first sample. Blocks
    continue the stream while their stamps lie within ``tolerance_s`` of where the previous block
    ended; any other block (a gap, a restart, a step back) restarts the filter on its own stamp,
    and what follows the input decides whether that is a gap to fill or a drop.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int,
                 tolerance_s: float = STAMP_TOLERANCE_S) -> None:
        self.up, self.down = resampling_ratio(in_rate, out_rate)
        self.in_rate, self.out_rate, self.channels = in_rate, out_rate, channels
        self.tolerance_frames = round(tolerance_s * in_rate)
        taps = resampling_filter(self.up, self.down)
        self.taps_per_phase = -(-len(taps) // self.up)
        padded = np.zeros(self.up * self.taps_per_phase)
        padded[:len(taps)] = taps
        # phases[p, j] multiplies input i_max - j for an output whose newest upsampled index
        # lies p past input i_max
        self._phases = padded.reshape(self.taps_per_phase, self.up).T.astype(np.float32)
        self._tap_offsets = np.arange(self.taps_per_phase)
        self._next_in: int | None = None  # the input sample index (since the epoch) expected next
        self._in_count = 0
        self._out_count = 0
        self._history = np.zeros((0, channels), np.float32)

    @property
    def delay_s(self) -> float:
        """Group delay the filter adds to the content of each sample."""
        return HALF_LEN_PER_RATE * max(self.up, self.down) / (self.up * self.in_rate)

    def push(self, stamp_ns: int, block: np.ndarray) -> tuple[int, np.ndarray]:
        """Convert a ``[frames, channels]`` block; return the first output stamp and the output."""
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"block shape {block.shape} is not [frames, {self.channels}]")
        first = round(stamp_ns * self.in_rate / NS_PER_S)
        if self._next_in is None or abs(first - self._next_in) > self.tolerance_frames:
            self._restart(first)
        self._next_in += len(block)
        window = np.concatenate([self._history, block.astype(np.float32, copy=False)])
        block_start = self._in_count  # input index of the block's first sample
        window_start = block_start - len(self._history)  # input index of window[0]
        self._in_count += len(block)
        # the block's first output lies this far after the block's first input (under a sample)
        lead = Fraction((self._out_count * self.in_rate - block_start * self.out_rate)
                        * NS_PER_S, self.in_rate * self.out_rate)
        stamp = stamp_ns + round(lead)
        end = -(-self._in_count * self.up // self.down)  # outputs whose inputs have all arrived
        out = np.empty((end - self._out_count, self.channels), np.float32)
        taps = self._tap_offsets
        step = max(1, GATHER_LIMIT // (self.taps_per_phase * self.channels))
        for first in range(0, len(out), step):  # bounded temporaries for any block size
            n = np.arange(self._out_count + first, min(self._out_count + first + step, end))
            newest, phase = np.divmod(n * self.down, self.up)
            rows = newest[:, None] - taps[None, :] - window_start
            out[first:first + len(n)] = np.einsum("nj,njc->nc", self._phases[phase],
                                                  window[rows])
        self._out_count = end
        self._history = window[len(window) - (self.taps_per_phase - 1):]
        return stamp, out

    def _restart(self, first: int) -> None:
        """Start a new timeline at input sample ``first``: silence before it, counters at zero."""
        self._next_in = first
        self._in_count = self._out_count = 0
        self._history = np.zeros((self.taps_per_phase - 1, self.channels), np.float32)
