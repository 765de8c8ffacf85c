"""
The small node's whole per-chunk path in one process, timed and profiled by stage.

A real ``SmallNode`` on a real ``DdsBackend`` (a private loopback domain) gets CDR bytes as its
DDS reader would hand them over: each step deserializes a hint (the large model's real output
for the chunk ``HINT_AGE`` back, coded in the hint format) and an audio chunk of the shipped
sample, and runs the node's callbacks: decode, match, fuse, infer, limit, encode, serialize and
write ``enhanced``. Chunks are fed at their real pace (one per 8 ms), as captured audio comes,
so caches and the node's catch-up guard see what they see live.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import time
from typing import Any, Callable

from kb_ros.audio.clock import CHUNK_FRAMES, CHUNK_MS, SAMPLE_RATE
from kb_ros.audio.pcm import AudioFormat, encode_pcm
from kb_ros.audio.stream import PcmChunkStream
from kb_ros.audio.wav import resample
from kb_ros.boosting.hint_format import HintStreamInfo, hint_audio_format
from kb_ros.cli.bench_compute import HINT_AGE, DemoAudio
from kb_ros.cli.bench_stats import time_calls
from kb_ros.nodes.small_node import SmallNode
from kb_ros.transport.dds_backend import DdsBackend
from kb_ros.transport.dds_config import DdsConfig, build_config_xml
from kb_ros.transport.dds_types import AudioDataStamped, chunk_from_wire, chunk_to_wire
from kb_ros.transport.messages import AudioChunkMsg, AudioInfoMsg
from kb_ros.transport.ros_args import RosArgs

CHUNK_NS = round(CHUNK_MS * 1e6)
INPUT_T0_NS = 1_700_000_000 * 10**9

# Stages of the path as the profile names them: (label, module path suffix, function)
STAGES = (
    ("deserialize CDR (audio + hint)", "dds_types.py", "deserialize"),
    ("hint: decode, validate, keep", "hint_matcher.py", "offer_pcm"),
    ("audio: decode, re-chunk", "stream.py", "push"),
    ("match hint to chunk", "hint_matcher.py", "on_chunk"),
    ("model step (ChunkEngine.process)", "engine.py", "process"),
    ("output limiter", "limiter.py", "process"),
    ("encode PCM", "pcm.py", "encode_pcm"),
    ("serialize + DDS write", "dds_backend.py", "publish"),
)


class NodePath:
    """A ``SmallNode`` and the CDR messages of the shipped sample, ready to be stepped."""

    def __init__(self, demo: DemoAudio, hint_format: str, domain_id: int) -> None:
        config = DdsConfig(domain_id, build_config_xml(), "loopback only")
        # max_lag_ms 0: every chunk runs the model, even when this busy machine falls behind
        args = RosArgs("small_node", "/kb", params={"max_lag_ms": 0.0}, log_level="warn")
        self.backend = DdsBackend(args, config)
        self.node = SmallNode(self.backend)
        self.demo = demo
        fmt = hint_audio_format(hint_format, 1)
        info = AudioInfoMsg.from_format(fmt)
        info.coding_format = HintStreamInfo(demo.large_id, fmt.coding).coding_format()
        self.node.on_hint_info(info)
        self.node.on_audio_info(AudioInfoMsg.from_format(AudioFormat()))
        self._fmt = fmt
        self._start_ns = 0

    def start(self) -> None:
        """Anchor the stamps: chunk k is captured from ``now + k * 8 ms``."""
        self._start_ns = time.time_ns()
        self._start_s = time.perf_counter()

    def _stamp(self, index: int) -> int:
        return self._start_ns + round(index * CHUNK_MS * 1e6)

    def messages(self, index: int) -> tuple[bytes, bytes | None]:
        """CDR bytes of chunk ``index`` and of the hint the node receives just before it."""
        k = index % self.demo.n_chunks
        audio = AudioDataStamped.serialize(chunk_to_wire(AudioChunkMsg(
            self._stamp(index), encode_pcm(self.demo.chunk(k), AudioFormat()), "mic")))
        hint = self.demo.hint(k)
        if hint is None or index < HINT_AGE:
            return audio, None
        return audio, AudioDataStamped.serialize(chunk_to_wire(AudioChunkMsg(
            self._stamp(index - HINT_AGE), encode_pcm(hint.audio, self._fmt))))

    def wait_until_captured(self, index: int) -> None:
        """Sleep until chunk ``index`` has been captured (its last sample is in)."""
        delay = self._start_s + (index + 1) * CHUNK_MS / 1e3 - time.perf_counter()
        if delay > 0:
            time.sleep(delay)

    def step(self, audio: bytes, hint: bytes | None) -> None:
        """Do what the node's DDS readers and callbacks do with one hint and one chunk."""
        if hint is not None:
            self.node.on_hint(chunk_from_wire(AudioDataStamped.deserialize(hint)))
        self.node.on_audio(chunk_from_wire(AudioDataStamped.deserialize(audio)))

    def close(self) -> None:
        self.backend.close()


def _stage_ms(stats: pstats.Stats, chunks: int) -> list[dict[str, Any]]:
    """Cumulative profile time per stage, in ms per chunk."""
    table = stats.stats  # type: ignore[attr-defined]
    rows = []
    for label, path_suffix, function in STAGES:
        total = sum(entry[3] for (path, _, name), entry in table.items()
                    if name == function and path.endswith(path_suffix))
        rows.append({"stage": label, "ms_per_chunk": round(total * 1e3 / chunks, 4)})
    return rows


def input_conversion_ms(demo: DemoAudio, chunks: int) -> dict[str, dict]:
    """
    CPU of the audio input stage per 8 ms block, S16LE at 16 kHz and at 48 kHz.

    The 48 kHz block also goes through the ``StreamResampler`` a 48 kHz microphone needs.
    """
    mix16 = demo.mix[:chunks * CHUNK_FRAMES]
    out = {}
    for rate in (SAMPLE_RATE, 48000):
        fmt = AudioFormat(sample_rate=rate, sample_format="S16LE")
        block = CHUNK_FRAMES * rate // SAMPLE_RATE
        audio = resample(mix16, SAMPLE_RATE, rate)
        payloads = [encode_pcm(audio[k * block:(k + 1) * block], fmt) for k in range(chunks)]
        stream = PcmChunkStream(fmt)
        samples = time_calls(lambda k: stream.push(INPUT_T0_NS + k * CHUNK_NS, payloads[k]),
                             chunks)
        out[f"{rate // 1000}k"] = samples.summary()
    return out


def node_path_section(demo: DemoAudio, hint_format: str, quick: bool,
                      notify: Callable[[str], None]) -> dict[str, Any]:
    """Time (paced, real time) and profile (cProfile) the in-process node path."""
    chunks = 125 if quick else 500
    path = NodePath(demo, hint_format, domain_id=150 + os.getpid() % 50)
    try:
        notify(f"{chunks} chunks paced at 8 ms")
        path.start()
        prepared = [path.messages(i) for i in range(chunks)]
        samples = time_calls(lambda i: path.step(*prepared[i]), chunks,
                             before=path.wait_until_captured)
        report = path.node.report()
        notify("profile")
        profiled = [path.messages(chunks + i) for i in range(chunks // 2)]
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        for audio, hint in profiled:
            path.step(audio, hint)
        profiler.disable()
        stages = _stage_ms(pstats.Stats(profiler), len(profiled))
    finally:
        path.close()
    notify("input conversion")
    conversion = input_conversion_ms(demo, min(chunks, demo.n_chunks))
    return {**samples.summary(), "hint_format": hint_format, "chunks": chunks,
            "input_stage_ms": conversion,
            "engine_compute_ms": report["compute_ms"], "hints": report["hints"]["hits"],
            "catch_up": report.get("catch_up", {}), "profile_ms_per_chunk": stages}
