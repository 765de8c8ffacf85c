"""Incoming PCM payloads to fixed chunks: decode, convert to 16 kHz, count what is bad."""

from __future__ import annotations

from collections import Counter
from typing import Callable

from kb_ros.audio.clock import (CHUNK_FRAMES, SAMPLE_RATE, STAMP_TOLERANCE_S, Chunk,
                                InputChunker, StampGuard)
from kb_ros.audio.pcm import AudioFormat, NonFiniteError, PcmError, decode_pcm
from kb_ros.audio.resample import StreamResampler

MAX_PAYLOAD_BYTES = 1 << 20
MAX_PAYLOAD_S = 32.768  # 1 MiB of S16LE mono at 16 kHz: a slower stream may not carry more


class PcmChunkStream:
    """
    Decodes payloads of an audio topic and re-chunks them to 128-frame chunks at ``sample_rate``.

    A stream at another rate (a 48 kHz microphone, a 44.1 kHz bag) is converted on the way by a
    ``StreamResampler``: 8 ms input blocks still give one chunk each, with the same stamps.

    The format comes from the stream's ``*_info`` topic. A latched info message may arrive
    after the first audio (DDS orders nothing across topics), so with ``hold_messages`` > 0
    the first payloads wait until the format is known; if no info comes within that many
    messages (or 1 MiB), the default (F32LE mono 16 kHz) is assumed and ``on_format_assumed``
    is called. Payloads that cannot be used (oversized, undecodable, non-finite, stamped off
    the stream's timeline: see ``StampGuard``) are dropped and counted by reason in ``drops``;
    ``push`` then returns no chunk and ``on_drop(reason, detail)`` is called, so the caller
    decides how loudly to log. ``stamp_tolerance_s``: how far a stamp may stray from the
    stream's sample count and still continue it (``STAMP_TOLERANCE_S``).
    """

    def __init__(self, fmt: AudioFormat | None = None, sample_rate: int = SAMPLE_RATE,
                 chunk_frames: int = CHUNK_FRAMES,
                 on_drop: Callable[[str, str], None] | None = None, hold_messages: int = 0,
                 on_format_assumed: Callable[[AudioFormat], None] | None = None,
                 stamp_tolerance_s: float = STAMP_TOLERANCE_S) -> None:
        self.sample_rate = sample_rate
        self.chunk_frames = chunk_frames
        self.stamp_tolerance_s = stamp_tolerance_s
        self._tolerance_frames = round(stamp_tolerance_s * sample_rate)
        self.drops: Counter = Counter()
        self.guard = StampGuard(sample_rate, self._tolerance_frames)
        self._on_drop = on_drop
        self._on_format_assumed = on_format_assumed
        self._hold_messages = hold_messages
        self._held: list[tuple[int, bytes]] = []
        self._held_bytes = 0
        self.format = AudioFormat(sample_rate=sample_rate)
        self._chunker = self._new_chunker(1)
        self._resampler: StreamResampler | None = None
        self.format_known = fmt is not None or hold_messages == 0
        if fmt is not None:
            self.set_format(fmt)

    def set_format(self, fmt: AudioFormat) -> list[Chunk]:
        """
        Adopt a new format and return the chunks of any payloads held until now.

        Raises PcmError (format unchanged) if the format cannot be used.
        """
        fmt.validate()
        if (fmt.sample_rate, fmt.channels) != (self.format.sample_rate, self.format.channels):
            self._resampler = (StreamResampler(fmt.sample_rate, self.sample_rate, fmt.channels,
                                               self.stamp_tolerance_s)
                               if fmt.sample_rate != self.sample_rate else None)
        if fmt.channels != self.format.channels:
            self._chunker = self._new_chunker(fmt.channels)
        if fmt.sample_rate != self.format.sample_rate:
            self.guard.retime(fmt.sample_rate)
        self.format = fmt
        self.format_known = True
        return self._release_held()

    def _new_chunker(self, channels: int) -> InputChunker:
        return InputChunker(channels, self.sample_rate, self.chunk_frames,
                            self._tolerance_frames)

    def push(self, stamp_ns: int, payload: bytes) -> list[Chunk]:
        """Decode one payload captured at ``stamp_ns``; return the chunks it completes."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            return self.reject("oversized", f"{len(payload)} bytes")
        if not self.format_known:
            self._held.append((stamp_ns, bytes(payload)))
            self._held_bytes += len(payload)
            if len(self._held) < self._hold_messages and self._held_bytes <= MAX_PAYLOAD_BYTES:
                return []
            return self.finish()
        return self._decode(stamp_ns, payload)

    def finish(self) -> list[Chunk]:
        """
        Decode what still waits for a format, assuming the default (e.g. at shutdown).

        Audio that was received is processed even if its format never came; a trailing
        partial chunk is not (there is no more input to complete it).
        """
        if not self.format_known:
            self.format_known = True
            if self._on_format_assumed is not None:
                self._on_format_assumed(self.format)
        return self._release_held()

    def reject(self, reason: str, detail: str = "") -> list[Chunk]:
        """Count and report a dropped message (also used for rejected ``*_info`` messages)."""
        self.drops[reason] += 1
        if self._on_drop is not None:
            self._on_drop(reason, detail)
        return []

    def _release_held(self) -> list[Chunk]:
        held, self._held, self._held_bytes = self._held, [], 0
        return [chunk for stamp_ns, payload in held for chunk in self._decode(stamp_ns, payload)]

    def _decode(self, stamp_ns: int, payload: bytes) -> list[Chunk]:
        try:
            block = decode_pcm(payload, self.format)
        except NonFiniteError as err:
            return self.reject("non_finite", str(err))
        except PcmError as err:
            return self.reject("bad_payload", str(err))
        if not len(block):
            return self.reject("empty")
        if len(block) > MAX_PAYLOAD_S * self.format.sample_rate:
            return self.reject("oversized", f"{len(block) / self.format.sample_rate:.1f} s")
        off_timeline = self.guard.admit(stamp_ns, len(block))
        if off_timeline is not None:
            return self.reject(off_timeline, f"stamp {stamp_ns} ns")
        if self._resampler is not None:
            stamp_ns, block = self._resampler.push(stamp_ns, block)
            if not len(block):
                return []
        return self._chunker.push(stamp_ns, block)
