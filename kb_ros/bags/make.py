"""
``kb-ros bag make``: a bag from WAV files, cut and encoded as a chosen publisher would.

Our capture node publishes 8 ms F32LE chunks on ``/kb/audio``; ros-drivers audio_capture
publishes S16LE buffers of ~10 ms (160 frames) on ``/audio/audio_stamped``. Both styles (and any
block size) can be made, so replay and the nodes can be tested against either. Stamps follow a
sample counter: a block's stamp is the capture time of its first sample.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kb_ros.audio.clock import MAX_STAMP_NS, NS_PER_S, SAMPLE_RATE, ChunkClock
from kb_ros.audio.pcm import AudioFormat, encode_pcm
from kb_ros.audio.wav import read_wav
from kb_ros.bags.topics import info_topic, offered_qos, topic_type
from kb_ros.bags.writer import BagWriter
from kb_ros.transport.messages import AudioChunkMsg, AudioInfoMsg


@dataclass(frozen=True)
class StreamStyle:
    """Topic, PCM format and block size of an audio publisher."""

    audio_topic: str
    sample_format: str
    block_frames: int


STYLES = {
    "kb": StreamStyle("/kb/audio", "F32LE", 128),
    "audio_capture": StreamStyle("/audio/audio_stamped", "S16LE", 160),
}
REFERENCE_FORMAT = "F32LE"  # the reference is for scoring: keep it exact


def reference_topic(audio_topic: str) -> str:
    """Return ``reference`` beside the audio topic (``/kb/reference``, ``/audio/reference``)."""
    return posixpath.join(posixpath.dirname(audio_topic), "reference")


@dataclass
class MakeOptions:
    mix: Path
    out: Path
    ref: Path | None = None
    style: StreamStyle = STYLES["kb"]
    storage: str = "mcap"
    start_ns: int = 1_700_000_000 * 1_000_000_000
    frame_id: str = "mic"


def _stream(topic: str, audio: np.ndarray, fmt: AudioFormat, block_frames: int,
            start_ns: int, frame_id: str) -> list[tuple[int, str, object]]:
    """
    ``(bag time, topic, message)``: the latched info first, then one message per block.

    A block's message is stored when its last sample has been captured.
    """
    clock = ChunkClock(start_ns, SAMPLE_RATE, block_frames)
    out: list[tuple[int, str, object]] = [
        (start_ns, info_topic(topic), AudioInfoMsg.from_format(fmt))]
    for k in range(-(-len(audio) // block_frames)):
        block = audio[k * block_frames:(k + 1) * block_frames]
        out.append((clock.frame_stamp_ns(k * block_frames + len(block)), topic,
                    AudioChunkMsg(clock.stamp_ns(k), encode_pcm(block, fmt), frame_id)))
    return out


def make_bag(opts: MakeOptions) -> dict:
    """Write the bag; returns a summary (path, topics, blocks, seconds)."""
    if opts.style.block_frames < 1:
        raise ValueError(f"block size must be >= 1 frame, got {opts.style.block_frames}")
    mix, _ = read_wav(opts.mix, sample_rate=SAMPLE_RATE)
    end_ns = opts.start_ns + len(mix) * NS_PER_S // SAMPLE_RATE
    if opts.start_ns <= 0 or end_ns > MAX_STAMP_NS:
        raise ValueError(f"--start-s {opts.start_ns / NS_PER_S:.3f}: stamps must lie between 0 "
                         f"and {MAX_STAMP_NS // NS_PER_S} s (builtin_interfaces/Time), audio "
                         "included")
    ref = read_wav(opts.ref, sample_rate=SAMPLE_RATE, mono=True)[0] if opts.ref else None
    style = opts.style
    fmt = AudioFormat(channels=mix.shape[1], sample_format=style.sample_format)
    messages = _stream(style.audio_topic, mix, fmt, style.block_frames, opts.start_ns,
                       opts.frame_id)
    blocks = len(messages) - 1
    if ref is not None:
        messages += _stream(reference_topic(style.audio_topic), ref,
                            AudioFormat(sample_format=REFERENCE_FORMAT), style.block_frames,
                            opts.start_ns, opts.frame_id)
    messages.sort(key=lambda item: item[0])  # stable: infos stay ahead of their first block
    topics = list(dict.fromkeys(topic for _, topic, _ in messages))
    with BagWriter(opts.out, opts.storage, keep_on_error=False) as writer:
        for topic in topics:
            writer.add_topic(topic, topic_type(topic), offered_qos(topic))
        for time_ns, topic, msg in messages:
            writer.write(topic, msg, time_ns)
    return {"bag": str(opts.out), "storage": opts.storage, "topics": topics, "blocks": blocks,
            "block_frames": min(style.block_frames, len(mix)), "seconds": len(mix) / SAMPLE_RATE}
