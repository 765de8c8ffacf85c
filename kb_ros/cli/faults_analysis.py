"""
What a fault scenario's recording says: chunk accounting, latency, counters, hint use, quality.

Pure functions over what the wire tap saw (``faults_tap``), so every scenario is judged by the
same code. Hint use is judged twice: the small node's own counters (``/diagnostics``, exact
cumulative counts at each report) and a replay of the recorded hint and chunk timeline through a
real ``HintMatcher``, which says which chunk could use which hint by the matcher's rules.
"""

from __future__ import annotations

import ast
import bisect
from dataclasses import dataclass, field

import numpy as np

from kb_ros.audio.clock import CHUNK_FRAMES, CHUNK_MS
from kb_ros.audio.metrics import si_snr_improvement
from kb_ros.audio.pcm import AudioFormat, decode_pcm
from kb_ros.boosting.hint_matcher import HintMatcher
from kb_ros.cli.faults_tap import TapLog, Tapped

SMALL_NODE_STATUS = "/small_node"
# small_node's diagnostics values every scenario reports
COUNTER_KEYS = ("chunks", "hits", "misses", "late", "duplicates", "invalid", "hit_rate",
                "hint_state", "deadline_misses", "age_histogram", "input_drops",
                "non_finite_outputs", "latency_p99_ms")


@dataclass
class Recording:
    """
    The topics a stream scenario taps.

    ``uplinked`` is the audio as link_node delivered it to the hint node, ``produced`` the
    hints as the hint node sent them, ``hints`` the hints as link_node delivered them.
    """

    audio: TapLog
    audio_info: TapLog
    enhanced: TapLog
    hints: TapLog
    hint_info: TapLog
    uplinked: TapLog
    produced: TapLog
    diagnostics: TapLog

    def format_of(self, info: TapLog) -> AudioFormat:
        """Return the format the latest ``*_info`` announced (the default if none came)."""
        return info.messages[-1].msg.to_format() if info.messages else AudioFormat()


@dataclass
class Check:
    """One pass/fail verdict of a scenario, with the figures it was judged on."""

    name: str
    passed: bool
    detail: str

    def __post_init__(self) -> None:
        self.passed = bool(self.passed)  # verdicts are often numpy bools: keep JSON-able


@dataclass
class Snapshot:
    """One ``/diagnostics`` report of small_node: exact counts after ``chunks`` chunks."""

    source_ns: int
    values: dict[str, str]

    @property
    def chunks(self) -> int:
        return int(self.values.get("chunks", 0))

    @property
    def hits(self) -> int:
        return int(self.values.get("hits", 0))

    def count(self, key: str) -> int:
        return int(float(self.values.get(key, 0)))


@dataclass
class Timeline:
    """
    The input chunks of a stream in capture order, and when the device took each one in.

    small_node (standalone backend) runs one thread: each round it takes every queued hint,
    then every queued audio message, and processes that batch of chunks before it looks at
    hints again. So chunk ``k`` is taken with chunk ``k - 1`` if its audio was published before
    that batch was taken, else once it is published and chunk ``k - 1`` is out; a hint
    published before the batch was taken can serve it.
    """

    stamps: list[int]
    take_ns: list[int]

    @classmethod
    def of(cls, rec: Recording) -> "Timeline":
        out_ns = {t.msg.stamp_ns: t.source_ns for t in rec.enhanced.messages}
        stamps: list[int] = []
        takes: list[int] = []
        previous_out = 0
        for tapped in rec.audio.messages:
            published = tapped.source_ns
            if takes and published < takes[-1]:
                takes.append(takes[-1])
            else:
                takes.append(max(published, previous_out))
            stamps.append(tapped.msg.stamp_ns)
            previous_out = out_ns.get(tapped.msg.stamp_ns, published)
        return cls(stamps, takes)

    def __len__(self) -> int:
        return len(self.stamps)

    def chunk_at(self, time_ns: int) -> int:
        """Index of the first chunk the device takes at or after ``time_ns``."""
        return bisect.bisect_left(self.take_ns, time_ns)


@dataclass
class ChunkAccount:
    """One output per input, in order, stamped with its input's stamp, finite and whole."""

    chunks_in: int
    chunks_out: int
    missing: int
    missing_at: list[int]  # input chunk numbers (from 0) without an output
    extra: int
    in_order: bool
    non_finite: int
    wrong_size: int
    stamps_8ms_apart: bool

    @property
    def exact(self) -> bool:
        return (self.chunks_in == self.chunks_out and not self.missing and not self.extra
                and self.in_order and not self.non_finite and not self.wrong_size)


def account_chunks(rec: Recording, sources: int = 1) -> ChunkAccount:
    """Compare every ``enhanced`` chunk (F32LE) with the ``audio`` chunk it answers."""
    in_stamps = [t.msg.stamp_ns for t in rec.audio.messages]
    out_stamps = [t.msg.stamp_ns for t in rec.enhanced.messages]
    non_finite = wrong_size = 0
    for tapped in rec.enhanced.messages:
        out = np.frombuffer(tapped.msg.data, "<f4")
        wrong_size += out.size != CHUNK_FRAMES * sources
        non_finite += not np.isfinite(out).all()
    in_set, out_set = set(in_stamps), set(out_stamps)
    missing_at = [k for k, stamp in enumerate(in_stamps) if stamp not in out_set]
    gaps = np.diff(in_stamps)
    return ChunkAccount(len(in_stamps), len(out_stamps), len(in_set - out_set), missing_at[:20],
                        len(out_stamps) - len(out_set & in_set), out_stamps == in_stamps,
                        non_finite, wrong_size,
                        bool(len(gaps) == 0 or np.all(np.abs(gaps - CHUNK_MS * 1e6) <= 1)))


def publish_latency_ms(rec: Recording) -> np.ndarray:
    """Stamp (capture of the first sample) to the small node's publish, per output chunk."""
    return np.array([(t.source_ns - t.msg.stamp_ns) / 1e6 for t in rec.enhanced.messages])


def percentiles_ms(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"p50": round(float(np.percentile(values, 50)), 2),
            "p99": round(float(np.percentile(values, 99)), 2),
            "max": round(float(values.max()), 2)}


def small_node_snapshots(rec: Recording) -> list[Snapshot]:
    """small_node's boosting reports in publish order (the first, 'starting up', has no counts)."""
    out = []
    for tapped in sorted(rec.diagnostics.messages, key=lambda t: t.source_ns):
        for status in tapped.msg.status:
            if status.hardware_id.endswith(SMALL_NODE_STATUS) and "chunks" in status.values:
                out.append(Snapshot(tapped.source_ns, status.values))
    return out


def replay_hint_use(rec: Recording, timeline: Timeline, age_range: tuple[int, int],
                    max_early_chunks: int = 4, sources: int = 1,
                    history_chunks: int = 64) -> list[int | None]:
    """
    Which chunk could use which hint: the age each chunk's hint would have, or None.

    The recorded hints (as delivered, with their payloads) and the chunks (with their audio, at
    the time the device could start each) go through a real ``HintMatcher`` in time order; at
    equal times hints go first, as small_node takes hints before audio.
    """
    matcher = HintMatcher(age_range[0], age_range[1], sources=sources,
                          history_chunks=history_chunks, max_early_chunks=max_early_chunks)
    hint_format, audio_format = rec.format_of(rec.hint_info), rec.format_of(rec.audio_info)
    events = sorted([(h.source_ns, 0, i) for i, h in enumerate(rec.hints.messages)]
                    + [(start, 1, k) for k, start in enumerate(timeline.take_ns)])
    ages: list[int | None] = [None] * len(timeline)
    for _, kind, index in events:
        if kind == 0:
            hint = rec.hints.messages[index].msg
            matcher.offer_pcm(hint.stamp_ns, hint.data, hint_format, None)
        else:
            chunk = rec.audio.messages[index].msg
            match = matcher.on_chunk(chunk.stamp_ns, decode_pcm(chunk.data, audio_format))
            ages[index] = match.age_chunks if match else None
    return ages


def age_histogram(values: dict[str, str]) -> dict[int, int]:
    """small_node's ``age_histogram`` diagnostics value as ``{age: chunks}``."""
    text = values.get("age_histogram", "{}")
    return {int(age): int(n) for age, n in ast.literal_eval(text).items()}


def hits_at(snapshots: list[Snapshot], chunk_index: int) -> Snapshot | None:
    """Return the last report made before chunk ``chunk_index`` was processed."""
    before = [s for s in snapshots if s.chunks <= chunk_index]
    return before[-1] if before else None


def hits_between(snapshots: list[Snapshot], after_chunk: int, before_chunk: int) -> int:
    """
    Count hits the node reported after chunk ``after_chunk`` and before ``before_chunk``.

    Exact for what it counts: from the first report covering ``after_chunk`` to the last one
    made before ``before_chunk`` (hits in between two reports are not placed any closer).
    """
    start = next((s for s in snapshots if s.chunks > after_chunk), None)
    end = hits_at(snapshots, before_chunk)
    if start is None or end is None or end.chunks < start.chunks:
        return 0
    return end.hits - start.hits


def hit_bracket(snapshots: list[Snapshot], hits_reached: int) -> tuple[int, int] | None:
    """Return the chunk indices between which the hit count first reached ``hits_reached``."""
    previous = 0
    for snap in snapshots:
        if snap.hits >= hits_reached:
            return previous, snap.chunks - 1
        previous = snap.chunks
    return None


@dataclass
class HintGap:
    """How hint use stopped and resumed around a hint outage (a killed node, a dead link)."""

    last_old_delivery_chunk: int
    first_new_delivery_chunk: int | None
    last_possible_old_use: int | None     # by the matcher's rules (replay)
    last_actual_old_use: tuple[int, int] | None  # bracket from the node's counters
    first_possible_new_use: int | None
    first_actual_new_use: tuple[int, int] | None
    extra_hits_in_gap: int                # node's hits minus the replay's, over the gap
    replay_precision_hits: int            # how far node and replay differed before the fault
    figures: dict = field(default_factory=dict)

    @property
    def stop_lag_chunks(self) -> int | None:
        """At least this many chunks after the last possible use, the node still used hints."""
        if self.last_actual_old_use is None or self.last_possible_old_use is None:
            return None
        return self.last_actual_old_use[0] - self.last_possible_old_use

    @property
    def recovery_chunks(self) -> int | None:
        """At most this many chunks after a new hint could first be used, the node used one."""
        if self.first_actual_new_use is None or self.first_possible_new_use is None:
            return None
        return self.first_actual_new_use[1] - self.first_possible_new_use


def hint_gap(timeline: Timeline, hints: list[Tapped], snapshots: list[Snapshot],
             replay_ages: list[int | None], fault_start_ns: int, fault_end_ns: int) -> HintGap:
    """Judge a hint outage between ``fault_start_ns`` and ``fault_end_ns`` (wall clock)."""
    old = [h.source_ns for h in hints if h.source_ns < fault_end_ns]
    new = [h.source_ns for h in hints if h.source_ns >= fault_end_ns]
    last_old_chunk = timeline.chunk_at(max(old)) if old else 0
    first_new_chunk = timeline.chunk_at(min(new)) if new else None
    horizon = first_new_chunk if first_new_chunk is not None else len(timeline)
    boosted = [k for k, age in enumerate(replay_ages) if age is not None]
    old_uses = [k for k in boosted if k < horizon]
    new_uses = [k for k in boosted if k >= horizon]
    fault_chunk = timeline.chunk_at(fault_start_ns)
    replayed_by = np.cumsum([age is not None for age in replay_ages])
    precision = max((abs(s.hits - int(replayed_by[s.chunks - 1])) for s in snapshots
                     if 0 < s.chunks <= fault_chunk), default=0)
    before = hits_at(snapshots, fault_chunk)
    frozen = hits_at(snapshots, horizon)
    extra = 0
    last_actual = None
    if before is not None and frozen is not None:
        replayed = sum(1 for k in boosted if before.chunks <= k < frozen.chunks)
        extra = (frozen.hits - before.hits) - replayed
        last_actual = hit_bracket(snapshots, frozen.hits) if frozen.hits else None
    first_actual = hit_bracket(snapshots, frozen.hits + 1) if frozen is not None else None
    return HintGap(last_old_chunk, first_new_chunk, old_uses[-1] if old_uses else None,
                   last_actual, new_uses[0] if new_uses else None, first_actual, extra,
                   precision, {"fault_chunk": fault_chunk,
                               "hint_outage_s": round((min(new) - max(old)) / 1e9, 3)
                               if old and new else None})


def stream_si_snri_db(rec: Recording, mix: np.ndarray, clean: np.ndarray,
                      output_delay_samples: int) -> float:
    """
    SI-SNRi of the enhanced stream against the reference of what was captured.

    The capture node streams the file from its start (looping if asked), so input chunk ``k``
    is file chunk ``k mod n``; the output is the enhanced input delayed by the model's look-ahead.
    """
    n_chunks = len(rec.audio)
    if not n_chunks or len(rec.enhanced) != n_chunks:
        return float("nan")
    pad = -len(mix) % CHUNK_FRAMES
    reps = -(-n_chunks * CHUNK_FRAMES // (len(mix) + pad))
    mix_stream = np.tile(np.concatenate([mix, np.zeros(pad, np.float32)]), reps)
    ref_stream = np.tile(np.concatenate([clean, np.zeros(pad, np.float32)]), reps)
    out = np.concatenate([np.frombuffer(t.msg.data, "<f4") for t in rec.enhanced.messages])
    n = len(out) - output_delay_samples
    return round(float(si_snr_improvement(out[output_delay_samples:], ref_stream[:n],
                                          mix_stream[:n])), 2)
