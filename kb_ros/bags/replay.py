"""
``kb-ros bag replay``: a bag's audio through the chunk pipeline in process, into a new bag.

The pieces are the nodes' own: ``PcmChunkStream`` (decode, re-chunk, count drops) for the
input, ``ChunkEngine`` for both models, ``EmulatedLink`` each way, ``HintMatcher`` on the device
side, hints encoded as hint_node encodes them. Time is the stream's own: a chunk is processed
when its last sample has been captured (its stamp + 8 ms), a hint leaves the workstation when
its chunk arrives there over the uplink and reaches the device after the downlink, all computed
from stamps as a discrete-event simulation. Hence ``--fast`` runs as fast as the models allow and
gives bit-identical output every time; ``--realtime`` only paces the chunks as they were
captured, so that the measured latency includes waiting for the CPU.

Output topics (in ``--namespace``): ``audio`` (the re-chunked input, F32LE: what the models saw),
``hints`` (as they reached the device), ``enhanced``, their ``*_info`` and ``/diagnostics``. A
trailing partial chunk is not processed, as in the live nodes.
"""

from __future__ import annotations

import bisect
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kb_ros.audio.clock import CHUNK_FRAMES, NS_PER_S, SAMPLE_RATE, STAMP_TOLERANCE_S, Chunk
from kb_ros.audio.pcm import AudioFormat, PcmError, decode_pcm, encode_pcm
from kb_ros.audio.stream import PcmChunkStream
from kb_ros.bags.errors import BagError
from kb_ros.bags.info import GapCounter
from kb_ros.bags.make import reference_topic
from kb_ros.bags.reader import BagReader
from kb_ros.bags.topics import info_topic, live_topics, offered_qos, topic_type
from kb_ros.bags.writer import BagWriter
from kb_ros.boosting.engine import ChunkEngine
from kb_ros.boosting.hint_format import HintStreamInfo
from kb_ros.boosting.hint_matcher import HintCounters, HintMatcher
from kb_ros.boosting.stats import LatencyStats
from kb_ros.cli.evaluate import si_snri
from kb_ros.models.shipped import load_model_and_manifest
from kb_ros.transport.emulated_link import EmulatedLink, LinkProfile
from kb_ros.transport.messages import (AUDIO_INFO, AUDIO_STAMPED, AudioChunkMsg, AudioInfoMsg,
                                       DiagnosticArrayMsg, DiagnosticStatusMsg)

CHUNK_NS = CHUNK_FRAMES * NS_PER_S // SAMPLE_RATE
NODE_NAME = "bag_replay"
MAX_SCORED_GAP_NS = NS_PER_S  # longer input gaps (restarts) are left out of the scoring axis


@dataclass
class ReplayOptions:
    bag: Path
    out: Path
    audio_topic: str = "/kb/audio"
    reference_topic: str | None = None  # None: ``reference`` beside the audio topic, if any
    namespace: str = "/kb"  # of the output topics
    link: LinkProfile = field(default_factory=lambda: LinkProfile(delay_ms=24.0))  # each way
    seed: int = 0
    realtime: bool = False
    model: str = "kb"
    large_model: str = "large"
    accept_any_hint_model: bool = False
    hint_format: str = "S16LE"
    output_format: str = "F32LE"
    storage: str = "mcap"
    diagnostics_period_s: float = 1.0
    # the audio's format, in place of the bag's audio_info (a bag recorded without one)
    input_format: AudioFormat | None = None
    info_topic: str | None = None  # where the audio's AudioInfo is; None: beside audio_topic
    stamp_tolerance_ms: float = STAMP_TOLERANCE_S * 1e3  # the nodes' stamp_tolerance_ms

    @property
    def input_info_topic(self) -> str:
        return self.info_topic or info_topic(self.audio_topic)


class Timeline:
    """
    Mono blocks kept with their stamps, rendered onto one sample axis for scoring.

    Missing blocks stay silent, so a gap never shifts later audio.
    """

    def __init__(self) -> None:
        self.blocks: list[tuple[int, np.ndarray]] = []
        self._sorted = True

    def add(self, stamp_ns: int, audio: np.ndarray) -> None:
        self._sorted = self._sorted and (not self.blocks or self.blocks[-1][0] <= stamp_ns)
        self.blocks.append((stamp_ns, audio.mean(axis=1)))

    def _sorted_blocks(self) -> list[tuple[int, np.ndarray]]:
        """Return the blocks by stamp (sorted once: stamps usually arrive in order)."""
        if not self._sorted:
            self.blocks.sort(key=lambda block: block[0])
            self._sorted = True
        return self.blocks

    def runs(self) -> list[tuple[int, int]]:
        """Stamp spans ``[start, end)`` the blocks cover, joined across gaps up to 1 s."""
        runs: list[list[int]] = []
        for stamp_ns, audio in self._sorted_blocks():
            end_ns = stamp_ns + len(audio) * NS_PER_S // SAMPLE_RATE
            if runs and stamp_ns <= runs[-1][1] + MAX_SCORED_GAP_NS:
                runs[-1][1] = max(runs[-1][1], end_ns)
            else:
                runs.append([stamp_ns, end_ns])
        return [(start, end) for start, end in runs]

    def render(self, runs: list[tuple[int, int]]) -> np.ndarray:
        """
        Return the audio of the stamp spans ``runs``, end to end; blocks outside are left out.

        Each span visits only the blocks that can reach it (bisected by stamp), so many spans
        cost no more than a few.
        """
        blocks = self._sorted_blocks()
        stamps = [stamp_ns for stamp_ns, _ in blocks]
        longest = max((len(audio) for _, audio in blocks), default=0)
        reach_ns = (longest + 1) * NS_PER_S // SAMPLE_RATE
        parts = []
        for origin_ns, end_ns in runs:
            out = np.zeros(round((end_ns - origin_ns) * SAMPLE_RATE / NS_PER_S), np.float32)
            for stamp_ns, audio in blocks[bisect.bisect_left(stamps, origin_ns - reach_ns):
                                          bisect.bisect_right(stamps, end_ns)]:
                start = round((stamp_ns - origin_ns) * SAMPLE_RATE / NS_PER_S)
                lo, hi = max(start, 0), min(start + len(audio), len(out))
                if lo < hi:
                    out[lo:hi] = audio[lo - start:hi - start]
            parts.append(out)
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def score_timelines(timelines: dict[str, Timeline]) -> dict[str, float]:
    """
    SI-SNRi of ``boosted`` and ``large`` against ``reference`` over ``mix``.

    All are placed on the stamps of the mix (the audio the models saw): its runs, end to end.
    A reference block stamped far from it, or a restart of the input a day later, then costs
    nothing, where one axis over every stamp would try to allocate the time between them.
    """
    runs = timelines["mix"].runs()
    if not runs:
        return {}
    ref, mix = timelines["reference"].render(runs), timelines["mix"].render(runs)
    return {name: si_snri(timelines[name].render(runs), ref, mix)
            for name in ("boosted", "large") if timelines[name].blocks}


def scoring_timelines() -> dict[str, Timeline]:
    return {name: Timeline() for name in ("reference", "mix", "boosted", "large")}


def input_topics(reader: BagReader, opts: ReplayOptions) -> tuple[dict[str, str], str | None]:
    """
    Return the bag topics a replay reads, by role, and the reference topic if any.

    The roles are ``audio``, ``audio_info``, ``reference`` and ``reference_info``; absent
    infos are left out, and so is the bag's ``audio_info`` when ``opts.input_format`` replaces
    it (``initial_input_info`` gives the replay that format's info instead).
    """
    reader.require(opts.audio_topic, AUDIO_STAMPED)
    if opts.info_topic is not None:
        reader.require(opts.info_topic, AUDIO_INFO)
    ref_topic = opts.reference_topic
    if ref_topic is not None:
        reader.require(ref_topic, AUDIO_STAMPED)
    elif reference_topic(opts.audio_topic) in reader.topics:
        ref_topic = reference_topic(opts.audio_topic)
    roles = {"audio": opts.audio_topic, "audio_info": opts.input_info_topic}
    if ref_topic is not None:
        roles.update(reference=ref_topic, reference_info=info_topic(ref_topic))
    roles = {role: topic for role, topic in roles.items() if topic in reader.topics and
             reader.topics[topic].count and
             reader.topics[topic].msg_type == (AUDIO_INFO if role.endswith("_info")
                                               else AUDIO_STAMPED)}
    if opts.input_format is not None:
        roles.pop("audio_info", None)
    return roles, ref_topic


def push_audio(stream: PcmChunkStream, gaps: GapCounter,
               msg: AudioChunkMsg) -> tuple[list[Chunk], bool]:
    """
    Push a replayed audio message; return its chunks and whether the stream kept it.

    Only kept messages enter the stamp statistics: a dropped one (no stamp, NaN) is no gap.
    """
    fmt, drops = stream.format, stream.drops.total()
    chunks = stream.push(msg.stamp_ns, msg.data)
    kept = stream.drops.total() == drops
    if kept:
        gaps.add(msg.stamp_ns, len(msg.data) // fmt.bytes_per_frame, fmt.sample_rate)
    return chunks, kept


def initial_input_info(reader: BagReader, opts: ReplayOptions,
                       roles: dict[str, str]) -> list[tuple[str, AudioInfoMsg]]:
    """
    Return the ``(role, audio_info)`` a replay takes before any audio.

    That is ``opts.input_format``, else the first info on the bag's info topic wherever it lies
    in the bag: a recording may catch the latched info only after some audio, and audio
    decoded in a format nobody announced is noise. A bag with no info, and no
    ``input_format`` given, is refused (raises ``BagError``).
    """
    if opts.input_format is not None:
        return [("audio_info", AudioInfoMsg.from_format(opts.input_format))]
    if "audio_info" not in roles:
        raise BagError(f"{opts.bag}: nothing says what format {opts.audio_topic} is in (no "
                       f"{AUDIO_INFO} on {opts.input_info_topic}): pass --input-format FMT "
                       "(with --input-rate and --input-channels if not 16000 Hz mono), or "
                       "--info-topic TOPIC")
    _, _, first = next(reader.messages([roles["audio_info"]]))
    return [("audio_info", first)]


class ReplayClock:
    """
    Releases chunks at their capture pace (``--realtime``) or at once (``--fast``).

    It measures capture stamp -> output: on the wall clock when real time, else as the chunk's
    own 8 ms plus the compute it took (what a node without queueing would show).
    """

    def __init__(self, realtime: bool) -> None:
        self.realtime = realtime
        self._anchor: tuple[int, int] | None = None  # (stream ns, monotonic ns)

    def release(self, due_ns: int) -> None:
        if not self.realtime:
            return
        if self._anchor is None:
            self._anchor = (due_ns, time.monotonic_ns())
        wait_ns = self._anchor[1] + due_ns - self._anchor[0] - time.monotonic_ns()
        if wait_ns > 0:
            time.sleep(wait_ns / NS_PER_S)

    def latency_ms(self, stamp_ns: int, due_ns: int, compute_ms: float) -> float:
        if not self.realtime:
            return (due_ns - stamp_ns) / 1e6 + compute_ms
        now_ns = self._anchor[0] + time.monotonic_ns() - self._anchor[1]
        return (now_ns - stamp_ns) / 1e6


class InProcessReplay:
    """One replay: feed it the bag's messages in bag order, then ``finish()`` for the report."""

    def __init__(self, opts: ReplayOptions, writer: BagWriter, score: bool) -> None:
        self.opts = opts
        self.writer = writer
        model, manifest = load_model_and_manifest(opts.model)
        self.small = ChunkEngine(model)
        self.small_id = manifest["model_id"]
        self.large = self.matcher = None
        self.large_id = None
        if self.small.uses_hints:
            large, large_manifest = load_model_and_manifest(opts.large_model)
            self.large = ChunkEngine(large)
            self.large_id = large_manifest["model_id"]
            producers = None if opts.accept_any_hint_model else frozenset(
                manifest.get("recipe", {}).get("hint_producers", []))
            self.matcher = HintMatcher(max(model.config.min_age, 1), max(model.config.max_age, 1),
                                       sources=self.small.sources, accepted_producers=producers)
        self.uplink = EmulatedLink[Chunk](opts.link, opts.seed)
        self.downlink = EmulatedLink[AudioChunkMsg](opts.link, opts.seed + 1)
        self.input = PcmChunkStream(stamp_tolerance_s=opts.stamp_tolerance_ms / 1e3)
        self.input_gaps = GapCounter()
        self.clock = ReplayClock(opts.realtime)
        self.latency_ms = LatencyStats()
        self.hint_format = AudioFormat(channels=self.small.sources, sample_format=opts.hint_format)
        self.out_format = AudioFormat(channels=self.small.sources,
                                      sample_format=opts.output_format)
        self.topics = {name.rsplit("/", 1)[-1]: name for name in live_topics(opts.namespace)}
        self.input_messages = self.enhanced = 0
        self.format_errors: list[str] = []
        self._audio_info_used = False
        self.enhanced_digest = hashlib.sha256()
        self.timelines = scoring_timelines() if score else {}
        self.reference_format: AudioFormat | None = AudioFormat()
        self._audio_out_format: AudioFormat | None = None
        self._next_diagnostics_ns: int | None = None
        self._now_ns = 0
        for name in self.topics.values():
            writer.add_topic(name, topic_type(name), offered_qos(name))

    def _write_infos(self, chunk: Chunk, now_ns: int) -> None:
        """
        Write the latched infos, before the first chunk and whenever the input's channels change.

        ``audio`` holds the re-chunked input as F32LE: exactly what the models saw.
        """
        fmt = AudioFormat(channels=chunk.audio.shape[1])
        if fmt == self._audio_out_format:
            return
        if self._audio_out_format is None:
            self.writer.write(self.topics["enhanced_info"],
                              AudioInfoMsg.from_format(self.out_format), now_ns)
            if self.large is not None:
                info = AudioInfoMsg.from_format(self.hint_format)
                info.coding_format = HintStreamInfo(self.large_id).coding_format()
                self.writer.write(self.topics["hint_info"], info, now_ns)
        self._audio_out_format = fmt
        self.writer.write(self.topics["audio_info"], AudioInfoMsg.from_format(fmt), now_ns)

    # -- inputs -----------------------------------------------------------------------------

    def on_audio_info(self, msg: AudioInfoMsg) -> None:
        """
        Adopt the announced format; a bad one after a good one is only counted, as in the node.

        If the bag's first info is unusable (48 kHz, U8, ...) there is no format to fall back
        on: the default would decode the audio as noise, so the replay stops with the reason.
        """
        try:
            self.input.set_format(msg.to_format())
            self._audio_info_used = True
        except PcmError as err:
            if not self._audio_info_used:
                raise BagError(f"{self.opts.bag}: {self.opts.input_info_topic} announces a format "
                               f"replay cannot use: {err} (--input-format FMT overrides it)"
                               ) from None
            self.format_errors.append(str(err))

    def on_reference_info(self, msg: AudioInfoMsg) -> None:
        """Adopt the reference's format; scoring compares at 16 kHz, so other rates are errors."""
        try:
            fmt = msg.to_format()
            if fmt.sample_rate != SAMPLE_RATE:
                raise PcmError(f"sample_rate {fmt.sample_rate} Hz: scoring needs {SAMPLE_RATE}")
            self.reference_format = fmt
        except PcmError as err:
            self.reference_format = None  # decoding it as anything else would score noise
            self.format_errors.append(f"reference: {err}")

    def on_reference(self, msg: AudioChunkMsg) -> None:
        if self.reference_format is None:
            return
        try:
            audio = decode_pcm(msg.data, self.reference_format)
        except PcmError:
            return
        if self.timelines:
            self.timelines["reference"].add(msg.stamp_ns, audio)

    def on_audio(self, msg: AudioChunkMsg) -> None:
        self.input_messages += 1
        chunks, _ = push_audio(self.input, self.input_gaps, msg)
        for chunk in chunks:
            self._step(chunk)

    # -- the pipeline -----------------------------------------------------------------------

    def _step(self, chunk: Chunk) -> None:
        """
        Chunk complete at ``due``: it goes up the link, hints due by then come down.

        Then the device enhances it with the freshest usable hint.
        """
        due_ns = self._now_ns = chunk.stamp_ns + CHUNK_NS
        self.clock.release(due_ns)
        self._write_infos(chunk, due_ns)
        self.writer.write(self.topics["audio"], AudioChunkMsg(
            chunk.stamp_ns, encode_pcm(chunk.audio, self._audio_out_format)), due_ns)
        hint = None
        if self.matcher is not None:
            self.uplink.offer(chunk, due_ns)
            self._deliver(due_ns)
            hint = self.matcher.on_chunk(chunk.stamp_ns, chunk.audio)
        t0 = time.perf_counter()
        out = self.small.process(chunk.audio, hint)
        compute_ms = (time.perf_counter() - t0) * 1e3
        payload = encode_pcm(out, self.out_format)
        self.latency_ms.add(self.clock.latency_ms(chunk.stamp_ns, due_ns, compute_ms))
        self.writer.write(self.topics["enhanced"], AudioChunkMsg(chunk.stamp_ns, payload), due_ns)
        self.enhanced += 1
        self.enhanced_digest.update(chunk.stamp_ns.to_bytes(8, "little", signed=True) + payload)
        if self.timelines:
            self.timelines["mix"].add(chunk.stamp_ns, chunk.audio)
            self.timelines["boosted"].add(chunk.stamp_ns, out)
        self._maybe_diagnostics(due_ns)

    def _deliver(self, now_ns: int) -> None:
        """
        Run link events in time order up to ``now_ns``.

        Chunks reaching the workstation become hints (sent back at that instant), hints
        reaching the device are offered.
        """
        while True:
            up, down = self.uplink.next_due_ns(), self.downlink.next_due_ns()
            t = min((x for x in (up, down) if x is not None), default=None)
            if t is None or t > now_ns:
                return
            if t == up:
                for chunk in self.uplink.due(t):
                    self._make_hint(chunk, t)
            else:
                for msg in self.downlink.due(t):
                    self.writer.write(self.topics["hints"], msg, t)
                    self._offer_hint(msg)

    def _make_hint(self, chunk: Chunk, now_ns: int) -> None:
        hint = self.large.process(chunk.audio)
        if self.timelines:
            self.timelines["large"].add(chunk.stamp_ns, hint)
        self.downlink.offer(AudioChunkMsg(chunk.stamp_ns, encode_pcm(hint, self.hint_format)),
                            now_ns)

    def _offer_hint(self, msg: AudioChunkMsg) -> None:
        self.matcher.offer_pcm(msg.stamp_ns, msg.data, self.hint_format, self.large_id)

    # -- outputs ----------------------------------------------------------------------------

    def _maybe_diagnostics(self, now_ns: int) -> None:
        period_ns = int(self.opts.diagnostics_period_s * NS_PER_S)
        if self._next_diagnostics_ns is None:
            self._next_diagnostics_ns = now_ns + period_ns
        elif now_ns >= self._next_diagnostics_ns:
            self._write_diagnostics(now_ns)
            self._next_diagnostics_ns = now_ns + period_ns

    def _write_diagnostics(self, now_ns: int) -> None:
        """Write a status with small_node's keys, so tools reading /diagnostics read replays."""
        hits = self.hint_counters
        compute = self.small.counters.compute_ms.summary()
        latency = self.latency_ms.summary()
        values = {"chunks": self.small.counters.chunks, "hit_rate": f"{hits.hit_rate:.3f}",
                  "hits": hits.hits, "misses": hits.misses, "late": hits.late,
                  "invalid": sum(hits.invalid.values()), "duplicates": hits.duplicates,
                  "age_histogram": hits.as_dict()["age_histogram"],
                  "compute_p50_ms": compute["p50"], "compute_p99_ms": compute["p99"],
                  "latency_p50_ms": latency["p50"], "latency_p99_ms": latency["p99"],
                  "input_drops": sum(self.input.drops.values())}
        status = DiagnosticStatusMsg(0, f"{NODE_NAME}: boosting", "replay",
                                     f"{self.opts.namespace.rstrip('/')}/{NODE_NAME}",
                                     {k: str(v) for k, v in values.items()})
        self.writer.write(self.topics["diagnostics"], DiagnosticArrayMsg(now_ns, [status]), now_ns)

    def finish(self) -> dict:
        self._write_diagnostics(self._now_ns)
        report = {
            "engine": "in-process", "mode": "realtime" if self.opts.realtime else "fast",
            "bag": str(self.opts.bag), "output_bag": str(self.opts.out),
            "audio_topic": self.opts.audio_topic, "small_model": self.small_id,
            "large_model": self.large_id, "link_delay_ms": self.opts.link.delay_ms,
            "input_messages": self.input_messages, "input_chunks": self.small.counters.chunks,
            "enhanced_chunks": self.enhanced, "input_drops": dict(self.input.drops),
            "input_stamps": self.input_gaps.as_dict(), "format_errors": self.format_errors,
            "hint_hit_rate": self.hint_counters.hit_rate,
            "hints": self.hint_counters.as_dict(),
            "compute_ms": {"small": self.small.counters.compute_ms.summary(),
                           "large": (self.large.counters.compute_ms.summary()
                                     if self.large else None)},
            "stamp_to_output_ms": self.latency_ms.summary(),
            "enhanced_sha256": self.enhanced_digest.hexdigest(),
        }
        if self.timelines and self.timelines["reference"].blocks:
            report["si_snri_db"] = score_timelines(self.timelines)
        return report

    @property
    def hint_counters(self) -> HintCounters:
        """The matcher's counters; all zero for a model without hints."""
        return self.matcher.counters if self.matcher is not None else HintCounters()


def replay_bag(opts: ReplayOptions) -> dict:
    """Replay ``opts.bag`` into the new bag ``opts.out``; returns the report."""
    with BagReader(opts.bag) as reader:
        roles, ref_topic = input_topics(reader, opts)
        with BagWriter(opts.out, opts.storage, keep_on_error=False) as writer:
            replay = InProcessReplay(opts, writer, score=ref_topic is not None)
            by_role = {"audio": replay.on_audio, "audio_info": replay.on_audio_info,
                       "reference": replay.on_reference,
                       "reference_info": replay.on_reference_info}
            handlers = {topic: by_role[role] for role, topic in roles.items()}
            for role, msg in initial_input_info(reader, opts, roles):
                by_role[role](msg)
            for topic, _, msg in reader.messages(handlers):
                handlers[topic](msg)
            if not replay.enhanced:
                raise BagError(f"{opts.bag}: no complete chunk on {opts.audio_topic} "
                               f"({replay.input_messages} messages, drops "
                               f"{dict(replay.input.drops)})")
            report = replay.finish()
        report["reference_topic"] = ref_topic
        return report
