"""
HintMatcher: picks, for each audio chunk, the freshest usable hint; never waits for one.

A hint carries the stamp of the audio chunk it was computed from. Its age is the distance, in
chunks of the device's capture clock, between the chunk being processed and that stamp: exact,
and immune to clock skew between machines since both stamps come from the device.

A hint is the large model's estimate of the target in the input it heard, so it cannot
plausibly be much louder than that input: the matcher learns each chunk's input energy and
rejects hints beyond it by more than a margin (a glitching or hostile producer).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from kb_ros.audio.clock import CHUNK_FRAMES, SAMPLE_RATE, NS_PER_S
from kb_ros.audio.pcm import AudioFormat, NonFiniteError, PcmError, decode_pcm
from kb_ros.audio.stream import MAX_PAYLOAD_BYTES
from kb_ros.boosting.limiter import ENERGY_FLOOR_DBFS, db_to_power, loudest_energy, split_energy
from kb_ros.models.filterbank import OUTPUT_DELAY_SAMPLES

DEFAULT_HINT_ENERGY_MARGIN_DB = 10.0


@dataclass(frozen=True)
class MatchedHint:
    """The hint used for the current chunk: audio ``[frames, sources]`` and its age."""

    stamp_ns: int
    audio: np.ndarray
    age_chunks: int


@dataclass
class HintCounters:
    """What happened to chunks and hints; exported to diagnostics and the CLI's JSON."""

    chunks: int = 0
    hits: int = 0
    misses: int = 0
    late: int = 0
    duplicates: int = 0
    timeline_restarts: int = 0
    invalid: Counter = field(default_factory=Counter)
    age_histogram: Counter = field(default_factory=Counter)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.chunks if self.chunks else 0.0

    def as_dict(self) -> dict:
        return {"chunks": self.chunks, "hits": self.hits, "misses": self.misses,
                "late": self.late, "duplicates": self.duplicates,
                "timeline_restarts": self.timeline_restarts,
                "invalid": dict(self.invalid), "invalid_total": sum(self.invalid.values()),
                "hit_rate": round(self.hit_rate, 4),
                "age_histogram": {str(k): v for k, v in sorted(self.age_histogram.items())}}


class HintMatcher:
    """
    Matches delayed hints to chunks by stamp.

    Rules (DESIGN.md): for each chunk use the freshest pending hint whose age lies in
    ``[min_age, max_age]``; hints older than ``max_age`` are late (dropped, counted); hints for
    stamps that are not among the last ``history_chunks`` chunks, of the wrong size, with
    NaN/Inf, or from a producer the model was not trained with are invalid (dropped, counted);
    a second hint for the same stamp is a duplicate. A hint may arrive before its own chunk (a
    fast link and a slow device): it waits, up to ``max_early_chunks`` ahead.

    Chunks must come in stamp order (the nodes' ``StampGuard`` sees to it): a chunk stamped no
    later than the previous one starts a new timeline (a restarted capture, a bag played again),
    and the matcher forgets the old one, dropping its pending hints as ``timeline_restart``.

    A hint louder than the input it estimates by more than ``energy_margin_db`` is invalid
    (``implausible_energy``; None turns the check off). The large model's output is its input
    delayed by ``delay_frames``, so the hint for stamp s covers the input's last
    ``delay_frames`` before s and the chunk's first ``chunk_frames - delay_frames``; input
    quieter than ``ENERGY_FLOOR_DBFS`` counts as that level.
    """

    def __init__(self, min_age: int, max_age: int, *, sources: int = 1,
                 accepted_producers: frozenset[str] | None = None, history_chunks: int = 64,
                 max_early_chunks: int = 4, chunk_frames: int = CHUNK_FRAMES,
                 sample_rate: int = SAMPLE_RATE,
                 energy_margin_db: float | None = DEFAULT_HINT_ENERGY_MARGIN_DB,
                 delay_frames: int = OUTPUT_DELAY_SAMPLES) -> None:
        if not 0 <= min_age <= max_age < history_chunks:
            raise ValueError(f"need 0 <= min_age <= max_age < history_chunks, got "
                             f"{min_age}, {max_age}, {history_chunks}")
        if not 0 <= delay_frames < chunk_frames:
            raise ValueError(f"need 0 <= delay_frames < chunk_frames, got {delay_frames}")
        self.min_age, self.max_age = min_age, max_age
        self.sources = sources
        self.accepted_producers = accepted_producers
        self.max_early_chunks = max_early_chunks
        self.chunk_frames = chunk_frames
        self.sample_rate = sample_rate
        self.chunk_ns = chunk_frames * NS_PER_S / sample_rate
        self.delay_frames = delay_frames
        self._energy_ratio = None if energy_margin_db is None else db_to_power(energy_margin_db)
        self._floor_power = db_to_power(ENERGY_FLOOR_DBFS)
        self.counters = HintCounters()
        self._history: deque[int] = deque(maxlen=history_chunks)
        self._input_power: dict[int, float] = {}  # known stamps -> power of the hint's input
        self._previous_tail: tuple[int, float] | None = None  # last chunk's stamp, tail energy
        self._seen: set[int] = set()
        self._pending: dict[int, np.ndarray] = {}

    @property
    def pending(self) -> int:
        """Hints kept, waiting to be used (bounded: see ``offer``'s overflow rule)."""
        return len(self._pending)

    @property
    def newest_stamp_ns(self) -> int | None:
        return self._history[-1] if self._history else None

    def age_of(self, stamp_ns: int) -> int:
        """Age in chunks of a hint for ``stamp_ns`` relative to the newest chunk."""
        return round((self._history[-1] - stamp_ns) / self.chunk_ns)

    def check_format(self, fmt: AudioFormat) -> AudioFormat:
        """Return a hint stream's announced format if its hints can fit; else raise PcmError."""
        fmt.validate()
        if fmt.sample_rate != self.sample_rate or fmt.channels != self.sources:
            raise PcmError(f"hints of {fmt.channels} channel(s) at {fmt.sample_rate} Hz cannot "
                           f"serve a model of {self.sources} source(s) at {self.sample_rate} Hz")
        return fmt

    def offer(self, stamp_ns: int, audio: np.ndarray, producer: str | None) -> str | None:
        """Validate and store a hint; return the drop reason, or None if it was kept."""
        if self.accepted_producers is not None and producer not in self.accepted_producers:
            return self._invalid("unknown_producer" if producer else "no_hint_info")
        if audio.shape != (self.chunk_frames, self.sources):
            return self._invalid("wrong_size")
        if not np.isfinite(audio).all():
            return self._invalid("non_finite")
        if stamp_ns in self._seen or stamp_ns in self._pending:
            self.counters.duplicates += 1
            return "duplicate"
        if not self._history:
            return self._invalid("unknown_stamp")
        if len(self._pending) > self.max_age + self.max_early_chunks:
            return self._invalid("overflow")
        age = self.age_of(stamp_ns)
        known = stamp_ns in self._input_power
        if not known and not -self.max_early_chunks <= age < 0:
            return self._invalid("unknown_stamp")
        if age > self.max_age:
            self._seen.add(stamp_ns)
            self.counters.late += 1
            return "late"
        if known and self._implausible(stamp_ns, audio):
            return self._invalid("implausible_energy")
        self._pending[stamp_ns] = audio
        return None

    def offer_pcm(self, stamp_ns: int, payload: bytes, fmt: AudioFormat,
                  producer: str | None) -> str | None:
        """Decode a hint message's PCM payload in ``fmt`` and offer it (see ``offer``)."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            return self._invalid("oversized")
        try:
            audio = decode_pcm(payload, fmt)
        except NonFiniteError:
            return self._invalid("non_finite")
        except PcmError:
            return self._invalid("bad_payload")
        return self.offer(stamp_ns, audio, producer)

    def on_chunk(self, stamp_ns: int, audio: np.ndarray) -> MatchedHint | None:
        """
        Register the chunk about to be processed and return the hint to use with it.

        ``audio`` ``[frames, channels]`` is the chunk's input: its energy bounds its hint's.
        """
        if self._history and stamp_ns <= self._history[-1]:
            self._restart_timeline()
        if len(self._history) == self._history.maxlen:
            oldest = self._history.popleft()
            self._input_power.pop(oldest)
            self._seen.discard(oldest)
        self._history.append(stamp_ns)
        self._input_power[stamp_ns] = self._hint_input_power(stamp_ns, audio)
        self.counters.chunks += 1
        early = self._pending.get(stamp_ns)
        if early is not None and self._implausible(stamp_ns, early):
            del self._pending[stamp_ns]
            self._invalid("implausible_energy")
        best: tuple[int, int] | None = None
        for hint_stamp in list(self._pending):
            age = self.age_of(hint_stamp)
            if age < 0:
                continue
            if hint_stamp not in self._input_power:
                del self._pending[hint_stamp]
                self._invalid("unknown_stamp")
            elif age > self.max_age:
                del self._pending[hint_stamp]
                self._seen.add(hint_stamp)
                self.counters.late += 1
            elif age >= self.min_age and (best is None or age < best[0]):
                best = (age, hint_stamp)
        if best is None:
            self.counters.misses += 1
            return None
        age, hint_stamp = best
        self._seen.add(hint_stamp)
        self.counters.hits += 1
        self.counters.age_histogram[age] += 1
        return MatchedHint(hint_stamp, self._pending.pop(hint_stamp), age)

    def _restart_timeline(self) -> None:
        """Forget the old timeline: its stamps may recur in the new one with other audio."""
        self.counters.timeline_restarts += 1
        if self._pending:
            self.counters.invalid["timeline_restart"] += len(self._pending)
        self._history.clear()
        self._input_power.clear()
        self._seen.clear()
        self._pending.clear()
        self._previous_tail = None

    def _hint_input_power(self, stamp_ns: int, audio: np.ndarray) -> float:
        """Mean power of the input a hint for this chunk covers (see the class docstring)."""
        head, tail = split_energy(audio, self.delay_frames)
        frames = self.chunk_frames - self.delay_frames
        previous, self._previous_tail = self._previous_tail, (stamp_ns, tail)
        if previous is not None and round((stamp_ns - previous[0]) / self.chunk_ns) == 1:
            head, frames = head + previous[1], self.chunk_frames
        return head / frames

    def _implausible(self, stamp_ns: int, audio: np.ndarray) -> bool:
        """Return True if a hint is louder than its input by more than the margin."""
        if self._energy_ratio is None:
            return False
        loudest = loudest_energy(audio) / len(audio)
        allowed = max(self._input_power[stamp_ns], self._floor_power) * self._energy_ratio
        return loudest > allowed

    def _invalid(self, reason: str) -> str:
        self.counters.invalid[reason] += 1
        return reason
