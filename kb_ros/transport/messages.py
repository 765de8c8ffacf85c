"""
Backend-neutral messages: what nodes publish and receive, whatever carries them.

Each mirrors one ROS 2 interface field for field; a backend converts to and from its own wire
classes (Cyclone DDS IdlStructs or rclpy messages), so node code is the same on both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kb_ros.audio.pcm import AudioFormat

AUDIO_STAMPED = "audio_common_msgs/msg/AudioDataStamped"
AUDIO_INFO = "audio_common_msgs/msg/AudioInfo"
DIAGNOSTIC_ARRAY = "diagnostic_msgs/msg/DiagnosticArray"


@dataclass
class AudioChunkMsg:
    """``audio_common_msgs/AudioDataStamped``: PCM bytes, capture time of the first frame."""

    stamp_ns: int
    data: bytes
    frame_id: str = ""


@dataclass
class AudioInfoMsg:
    """``audio_common_msgs/AudioInfo``."""

    channels: int = 1
    sample_rate: int = 16000
    sample_format: str = "F32LE"
    bitrate: int = 0
    coding_format: str = "wave"

    @classmethod
    def from_format(cls, fmt: AudioFormat) -> "AudioInfoMsg":
        return cls(fmt.channels, fmt.sample_rate, fmt.sample_format, fmt.bitrate,
                   fmt.coding_format)

    def to_format(self) -> AudioFormat:
        """Return the PCM format this info announces (validated: raises PcmError if unusable)."""
        return AudioFormat(self.channels, self.sample_rate, self.sample_format,
                           self.coding_format).canonical().validate()


@dataclass
class DiagnosticStatusMsg:
    """``diagnostic_msgs/DiagnosticStatus``; levels OK=0, WARN=1, ERROR=2, STALE=3."""

    level: int
    name: str
    message: str
    hardware_id: str = ""
    values: dict[str, str] = field(default_factory=dict)


@dataclass
class DiagnosticArrayMsg:
    """``diagnostic_msgs/DiagnosticArray``."""

    stamp_ns: int
    status: list[DiagnosticStatusMsg] = field(default_factory=list)


MESSAGE_TYPES = {AUDIO_STAMPED: AudioChunkMsg, AUDIO_INFO: AudioInfoMsg,
                 DIAGNOSTIC_ARRAY: DiagnosticArrayMsg}
