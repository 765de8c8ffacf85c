"""
How hints are coded on the wire, and what ``hint_info.coding_format`` says about a hint stream.

Hints are audio in an ``audio_common_msgs`` stream, so any ROS tool can record and play them.
``hint_info`` (latched) announces them as audio_common does for any stream, plus kb_ros fields:

- ``sample_format`` / ``coding_format`` select the codec (``kb_ros.audio.pcm``). The hint
  formats (hint_node's ``hint_format`` parameter) are ``F32LE`` (``wave`` + ``F32LE``,
  512 kbit/s a source), ``S16LE`` (``wave`` + ``S16LE``, 256 kbit/s) and ``MULAW``
  (``mulaw`` + ``S16LE``: G.711 mu-law, one byte a sample, 128 kbit/s).
- ``coding_format`` = ``<coding>;kb_hint=<version>;model=<model id>``, e.g.
  ``mulaw;kb_hint=1;model=large-1a2b3c4d``: the extra fields let the device reject hints from a
  model it was not trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

from kb_ros.audio.pcm import CODINGS, MULAW, WAVE, AudioFormat

HINT_VERSION = 1
# hint_node's ``hint_format`` choices: (coding, sample_format) of each
HINT_FORMATS = {"F32LE": (WAVE, "F32LE"), "S16LE": (WAVE, "S16LE"), "MULAW": (MULAW, "S16LE")}
# chosen from `kb-ros bench` (docs/BENCHMARKS.md, hint bandwidth vs quality)
DEFAULT_HINT_FORMAT = "MULAW"


def hint_audio_format(name: str, sources: int) -> AudioFormat:
    """Return the ``AudioFormat`` of hint format ``name`` (a ``HINT_FORMATS`` key)."""
    if name not in HINT_FORMATS:
        raise ValueError(f"unknown hint format {name!r}; expected one of {sorted(HINT_FORMATS)}")
    coding, sample_format = HINT_FORMATS[name]
    return AudioFormat(channels=sources, sample_format=sample_format, coding_format=coding)


@dataclass(frozen=True)
class HintStreamInfo:
    """The kb_ros fields of a hint stream's ``coding_format``."""

    model_id: str
    coding: str = WAVE
    version: int = HINT_VERSION

    def coding_format(self) -> str:
        return f"{self.coding};kb_hint={self.version};model={self.model_id}"

    @classmethod
    def parse(cls, coding_format: str) -> "HintStreamInfo | None":
        """None unless ``coding_format`` names a kb_ros hint stream of a known version."""
        parts = coding_format.split(";")
        if parts[0] not in CODINGS:
            return None
        fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if fields.get("kb_hint") != str(HINT_VERSION) or not fields.get("model"):
            return None
        return cls(model_id=fields["model"], coding=parts[0])
