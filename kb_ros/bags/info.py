"""
``kb-ros bag info``: what a bag holds, and whether its audio stamps run without gaps.

A gap is a stamp later than the previous block's stamp plus its duration by more than half a
block: lost messages, which replay fills with silence instead of shifting later audio. A stamp
earlier than that by as much is a step back (a restarted recorder or capture clock).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from kb_ros.audio.clock import MAX_STAMP_NS, NS_PER_S
from kb_ros.audio.pcm import AudioFormat, PcmError, decode_pcm
from kb_ros.bags.reader import BagReader
from kb_ros.bags.topics import info_topic
from kb_ros.transport.messages import AUDIO_INFO, AUDIO_STAMPED

MAX_LISTED_GAPS = 10


@dataclass
class StampGap:
    at_s: float  # stamp of the block after the gap, from the stream's first stamp
    missing_ms: float  # negative: a step back


def _stream_format(reader: BagReader, topic: str) -> tuple[AudioFormat, str]:
    """
    Return the first valid format announced on the topic's info topic, else F32LE mono 16 kHz.

    The fallback is what the nodes assume until an info arrives.
    """
    info = info_topic(topic)
    why = f"no {info}"
    if reader.topics.get(info) and reader.topics[info].msg_type == AUDIO_INFO:
        for _, _, msg in reader.messages([info]):
            try:
                return msg.to_format(), info
            except PcmError as err:
                why = f"{info} announces no usable format: {err}"
    return AudioFormat(), (f"assumed ({why}; replay needs --input-format, or --info-topic for "
                           "an info on another topic)")


class GapCounter:
    """Follows one stream's stamps block by block and counts gaps and steps back."""

    def __init__(self) -> None:
        self.gaps = 0
        self.steps_back = 0
        self.missing_ms = 0.0
        self.first_gaps: list[StampGap] = []
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self._expected = 0

    def add(self, stamp_ns: int, frames: int, sample_rate: int) -> None:
        """Follow a block of ``frames`` at ``sample_rate`` stamped ``stamp_ns``."""
        duration_ns = frames * NS_PER_S // sample_rate
        if self.first_ns is None:
            self.first_ns = stamp_ns
        elif abs(stamp_ns - self._expected) > duration_ns / 2:
            offset_ms = (stamp_ns - self._expected) / 1e6
            self.gaps += offset_ms > 0
            self.steps_back += offset_ms < 0
            self.missing_ms += max(offset_ms, 0.0)
            if len(self.first_gaps) < MAX_LISTED_GAPS:
                self.first_gaps.append(StampGap(round((stamp_ns - self.first_ns) / NS_PER_S, 6),
                                                round(offset_ms, 3)))
        self.last_ns = stamp_ns
        self._expected = stamp_ns + duration_ns

    def as_dict(self) -> dict:
        return {"gaps": self.gaps, "missing_ms": round(self.missing_ms, 3),
                "steps_back": self.steps_back,
                "first_gaps": [asdict(gap) for gap in self.first_gaps]}


def audio_stream_info(reader: BagReader, topic: str) -> dict:
    """Format, block count and sizes, audio length, stamp span and gaps of an audio topic."""
    fmt, source = _stream_format(reader, topic)
    gaps = GapCounter()
    blocks = frames_total = bad_payloads = bad_stamps = 0
    sizes: set[int] = set()
    for _, _, msg in reader.messages([topic]):
        try:
            frames = len(decode_pcm(msg.data, fmt))  # not whole frames, NaN, Inf: as replay
        except PcmError:
            frames = 0
        if not frames:
            bad_payloads += 1
            continue
        if not 0 < msg.stamp_ns <= MAX_STAMP_NS - frames * NS_PER_S // fmt.sample_rate:
            bad_stamps += 1  # no stamp (0) or past int32 seconds: replay drops these too
            continue
        blocks += 1
        frames_total += frames
        sizes.add(frames)
        gaps.add(msg.stamp_ns, frames, fmt.sample_rate)
    span = [gaps.first_ns / NS_PER_S, gaps.last_ns / NS_PER_S] if blocks else []
    return {"format": asdict(fmt), "format_source": source, "blocks": blocks,
            "block_frames": [min(sizes), max(sizes)] if sizes else [],
            "audio_s": frames_total / fmt.sample_rate, "stamps_s": span,
            "bad_payloads": bad_payloads, "bad_stamps": bad_stamps, **gaps.as_dict()}


def bag_info(path: str | Path) -> dict:
    """Topics (type, count, offered QoS), span and, per audio topic, format and gaps."""
    with BagReader(path) as reader:
        topics = [{"name": t.name, "type": t.msg_type, "count": t.count,
                   "qos": [f"{q.reliability.name.lower()}/{q.durability.name.lower()}"
                           f"/depth {q.depth}" for q in t.qos]}
                  for t in sorted(reader.topics.values(), key=lambda t: t.name)]
        audio = {t["name"]: audio_stream_info(reader, t["name"])
                 for t in topics if t["type"] == AUDIO_STAMPED and t["count"]}
        return {"bag": str(path), "messages": reader.message_count,
                "start_s": reader.start_ns / NS_PER_S,
                "duration_s": (reader.end_ns - reader.start_ns) / NS_PER_S,
                "topics": topics, "audio": audio}


def format_info(info: dict) -> str:
    lines = [f"bag       {info['bag']}",
             f"messages  {info['messages']} over {info['duration_s']:.3f} s",
             "topics"]
    width = max([len(t["name"]) for t in info["topics"]] + [5])
    for t in info["topics"]:
        qos = ", ".join(t["qos"]) or "no QoS stored"
        lines.append(f"  {t['name']:<{width}}  {t['count']:>7}  {t['type']}  [{qos}]")
    for name, a in info["audio"].items():
        fmt = a["format"]
        lines.append(f"audio {name}: {fmt['sample_format']} {fmt['channels']} ch "
                     f"{fmt['sample_rate']} Hz ({a['format_source']}), {a['blocks']} blocks of "
                     f"{'-'.join(str(n) for n in sorted(set(a['block_frames'])))} frames, "
                     f"{a['audio_s']:.3f} s of audio")
        lines.append(f"  stamp gaps: {a['gaps']} ({a['missing_ms']:.1f} ms missing), "
                     f"steps back: {a['steps_back']}, bad payloads: {a['bad_payloads']}, "
                     f"bad stamps: {a['bad_stamps']}")
        for gap in a["first_gaps"]:
            lines.append(f"    at +{gap['at_s']:.3f} s: {gap['missing_ms']:+.1f} ms")
    return "\n".join(lines)
