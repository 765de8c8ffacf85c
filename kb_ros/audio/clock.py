"""
Chunk timing: the 8 ms chunk grid, sample-counter stamps and re-chunking of any block size.

A chunk's stamp is the capture time of its first sample, derived from a sample counter
(``start + n / rate``), never from the clock after a read: stamps are then exactly 8 ms apart and
a hint can name the chunk it belongs to without ambiguity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
CHUNK_FRAMES = 128
CHUNK_MS = CHUNK_FRAMES * 1000 / SAMPLE_RATE  # 8 ms: the per-chunk compute budget
NS_PER_S = 1_000_000_000
# builtin_interfaces/Time.sec is an int32: audio ending later has chunk stamps no publisher can
# write (sec = 2**31 - 1 with nanosec up to 2**32 - 1 arrives as valid CDR).
MAX_STAMP_NS = (2**31 - 1) * NS_PER_S
# How far a block's stamp may stray from where the stream's sample count puts it and still
# continue the stream: capture clocks jitter. Drivers that stamp each buffer with the time
# they publish it (not when it was captured) jitter more and need more.
STAMP_TOLERANCE_S = 0.005
STAMP_TOLERANCE_RANGE_MS = (0.1, 100.0)  # what a user may set
STAMP_TOLERANCE_FRAMES = round(STAMP_TOLERANCE_S * SAMPLE_RATE)


def join_stamp(sec: int, nanosec: int) -> int:
    """
    Nanoseconds of a ``builtin_interfaces/Time``, or 0 (no stamp) for one that is not valid.

    ``nanosec`` must lie in [0, 1e9), but CDR carries any uint32: ``sec = 2**31 - 1`` with
    ``nanosec = 2**32 - 1`` would join to a stamp no publisher can write back. As 0 it is a
    counted ``bad_stamp`` drop downstream, and a relay passes it on without failing.
    """
    return sec * NS_PER_S + nanosec if 0 <= nanosec < NS_PER_S else 0


@dataclass(frozen=True)
class ChunkClock:
    """Maps chunk indices to stamps for a stream that started at ``start_ns``."""

    start_ns: int
    sample_rate: int = SAMPLE_RATE
    chunk_frames: int = CHUNK_FRAMES

    @property
    def chunk_ns(self) -> float:
        return self.chunk_frames * NS_PER_S / self.sample_rate

    def frame_stamp_ns(self, frame_index: int) -> int:
        """Stamp of sample ``frame_index`` (exact integer arithmetic, no drift)."""
        return self.start_ns + frame_index * NS_PER_S // self.sample_rate

    def stamp_ns(self, chunk_index: int) -> int:
        return self.frame_stamp_ns(chunk_index * self.chunk_frames)

    def chunks_between(self, earlier_ns: int, later_ns: int) -> int:
        """Whole chunks from one stamp to another, rounded: robust to stamp rounding."""
        return round((later_ns - earlier_ns) / self.chunk_ns)


@dataclass
class Chunk:
    """One fixed-size block of float32 ``[frames, channels]`` audio and its stamp."""

    stamp_ns: int
    audio: np.ndarray


@dataclass
class RechunkerStats:
    blocks: int = 0
    chunks: int = 0
    gaps: int = 0
    gap_frames_filled: int = 0
    resyncs: int = 0


@dataclass
class StampGuardStats:
    blocks: int = 0
    gaps: int = 0
    gap_frames: int = 0
    reanchors: int = 0


class StampGuard:
    """
    Admits a stream's blocks only while their stamps continue its timeline.

    A block is expected where the previous one ended, within ``tolerance_frames`` (jittery
    capture clocks); up to ``max_gap_frames`` later is a gap (lost input, counted). A block that
    steps back (a duplicate, reordered or replayed message) or jumps further ahead (a bogus
    stamp) is dropped, unless ``confirm_blocks`` consecutive such blocks agree on a new
    timeline: that is a restart (a new capture, a bag played again), and the guard re-anchors
    on it. So one hostile stamp costs nothing but its own block, and a real restart costs its
    first ``confirm_blocks - 1`` blocks.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE,
                 tolerance_frames: int = STAMP_TOLERANCE_FRAMES,
                 max_gap_frames: int = SAMPLE_RATE, confirm_blocks: int = 3) -> None:
        self.sample_rate = sample_rate
        self.tolerance_frames = tolerance_frames
        self.max_gap_frames = max_gap_frames
        self.confirm_blocks = confirm_blocks
        self.stats = StampGuardStats()
        self._next_sample: int | None = None
        self._candidate_next: int | None = None
        self._candidate_blocks = 0

    def retime(self, sample_rate: int) -> None:
        """Follow the stream at a new sample rate: same tolerances in time, a new timeline."""
        scale = sample_rate / self.sample_rate
        self.tolerance_frames = round(self.tolerance_frames * scale)
        self.max_gap_frames = round(self.max_gap_frames * scale)
        self.sample_rate = sample_rate
        self._next_sample = self._candidate_next = None
        self._candidate_blocks = 0

    def admit(self, stamp_ns: int, frames: int) -> str | None:
        """Return None if a block of ``frames`` stamped ``stamp_ns`` is admitted, else why not."""
        if not 0 < stamp_ns <= MAX_STAMP_NS - frames * NS_PER_S // self.sample_rate:
            return "bad_stamp"
        first = round(stamp_ns * self.sample_rate / NS_PER_S)
        if self._next_sample is not None:
            offset = first - self._next_sample
            if not -self.tolerance_frames <= offset <= self.max_gap_frames:
                return self._off_timeline(first, frames, offset)
            if offset > self.tolerance_frames:
                self.stats.gaps += 1
                self.stats.gap_frames += offset
        self._admit(first, frames)
        return None

    def _off_timeline(self, first: int, frames: int, offset: int) -> str | None:
        candidate = self._candidate_next
        if candidate is not None and abs(first - candidate) <= self.tolerance_frames:
            self._candidate_blocks += 1
        else:
            self._candidate_blocks = 1
        self._candidate_next = first + frames
        if self._candidate_blocks < self.confirm_blocks:
            return "stamp_step_back" if offset < 0 else "stamp_jump"
        self.stats.reanchors += 1
        self._admit(first, frames)
        return None

    def _admit(self, first: int, frames: int) -> None:
        self.stats.blocks += 1
        self._next_sample = first + frames
        self._candidate_next = None
        self._candidate_blocks = 0


class Rechunker:
    """
    Turns blocks of any size into ``chunk_frames`` chunks with sample-accurate stamps.

    Chunk boundaries lie on an absolute grid (sample index since the epoch, a multiple of
    ``chunk_frames``), so two nodes re-chunking the same stream agree on every chunk stamp even
    if one joined late. The first block anchors a sample counter; later blocks are placed by
    counting samples, and stamps within ``gap_tolerance_frames`` of the counter (jittery capture
    clocks) are trusted to it. A block further ahead is a gap (lost input), filled with silence
    up to ``max_gap_fill_frames`` so that later audio keeps its time; a longer gap, or a jump
    backwards, flushes the partial chunk and re-anchors.
    """

    def __init__(self, channels: int = 1, sample_rate: int = SAMPLE_RATE,
                 chunk_frames: int = CHUNK_FRAMES,
                 gap_tolerance_frames: int = STAMP_TOLERANCE_FRAMES,
                 max_gap_fill_frames: int = SAMPLE_RATE) -> None:
        self.channels = channels
        self.sample_rate = sample_rate
        self.chunk_frames = chunk_frames
        self.gap_tolerance_frames = gap_tolerance_frames
        self.max_gap_fill_frames = max_gap_fill_frames
        self.stats = RechunkerStats()
        self._clock = ChunkClock(0, sample_rate, chunk_frames)
        self._next_sample: int | None = None
        self._buffer = np.zeros((chunk_frames, channels), np.float32)
        self._filled = 0
        self._chunk_start = 0

    @property
    def has_partial(self) -> bool:
        return self._filled > 0

    def push(self, stamp_ns: int, block: np.ndarray) -> list[Chunk]:
        """Add a ``[frames, channels]`` block captured at ``stamp_ns``; return completed chunks."""
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"block shape {block.shape} is not [frames, {self.channels}]")
        self.stats.blocks += 1
        first_sample = round(stamp_ns * self.sample_rate / NS_PER_S)
        out: list[Chunk] = []
        if self._next_sample is None:
            self._anchor(first_sample)
        else:
            offset = first_sample - self._next_sample
            if self.gap_tolerance_frames < offset <= self.max_gap_fill_frames:
                self.stats.gaps += 1
                self.stats.gap_frames_filled += offset
                out += self._append(np.zeros((offset, self.channels), np.float32))
            elif abs(offset) > self.gap_tolerance_frames:
                self.stats.resyncs += 1
                out += self.flush()
                self._anchor(first_sample)
        out += self._append(block)
        return out

    def flush(self) -> list[Chunk]:
        """Emit the partial chunk zero-padded and forget the anchor (end of stream or resync)."""
        out = []
        if self._filled:
            out = self._append(np.zeros((self.chunk_frames - self._filled, self.channels),
                                        np.float32))
        self._next_sample = None
        return out

    def _anchor(self, first_sample: int) -> None:
        """Start a chunk on the grid at or before ``first_sample``, zero-padding the lead-in."""
        self._chunk_start = first_sample - first_sample % self.chunk_frames
        self._filled = first_sample - self._chunk_start
        self._buffer[:self._filled] = 0.0
        self._next_sample = first_sample

    def _append(self, block: np.ndarray) -> list[Chunk]:
        out = []
        pos = 0
        self._next_sample += len(block)
        while pos < len(block):
            take = min(self.chunk_frames - self._filled, len(block) - pos)
            self._buffer[self._filled:self._filled + take] = block[pos:pos + take]
            self._filled += take
            pos += take
            if self._filled == self.chunk_frames:
                out.append(Chunk(self._clock.frame_stamp_ns(self._chunk_start),
                                 self._buffer.copy()))
                self._chunk_start += self.chunk_frames
                self._filled = 0
        self.stats.chunks += len(out)
        return out


class InputChunker:
    """
    Passes through blocks that already are one chunk and re-chunks anything else.

    One-chunk blocks keep their stamps, as the output contract requires; anything else is
    re-chunked on the absolute grid.
    """

    def __init__(self, channels: int = 1, sample_rate: int = SAMPLE_RATE,
                 chunk_frames: int = CHUNK_FRAMES,
                 gap_tolerance_frames: int = STAMP_TOLERANCE_FRAMES) -> None:
        self.chunk_frames = chunk_frames
        self.rechunker = Rechunker(channels, sample_rate, chunk_frames, gap_tolerance_frames)

    def push(self, stamp_ns: int, block: np.ndarray) -> list[Chunk]:
        if len(block) == self.chunk_frames and not self.rechunker.has_partial:
            self.rechunker.flush()
            return [Chunk(stamp_ns, block)]
        return self.rechunker.push(stamp_ns, block)
