"""
An independent ROS 2 wire peer for tests: its own IdlStructs and the reference loopback XML.

Nothing here imports kb_ros, so a test that talks to kb_ros through these types checks our wire
format against an encoding written separately, as rmw_cyclonedds_cpp would see it.
"""

import os
import time
from dataclasses import dataclass

from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.annotations import final
from cyclonedds.idl.types import int32, sequence, uint8, uint32
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

LOOPBACK_XML = (
    '<CycloneDDS><Domain Id="any"><General><Interfaces><NetworkInterface name="lo" '
    'multicast="false"/></Interfaces><AllowMulticast>false</AllowMulticast></General>'
    '<Discovery><ParticipantIndex>auto</ParticipantIndex><MaxAutoParticipantIndex>30'
    '</MaxAutoParticipantIndex><Peers><Peer Address="127.0.0.1"/></Peers></Discovery>'
    '</Domain></CycloneDDS>')


@final
@dataclass
class Time_(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32
    nanosec: uint32


@final
@dataclass
class Header_(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time_
    frame_id: str


@final
@dataclass
class AudioData_(IdlStruct, typename="audio_common_msgs::msg::dds_::AudioData_"):
    data: sequence[uint8]


@final
@dataclass
class AudioDataStamped_(IdlStruct, typename="audio_common_msgs::msg::dds_::AudioDataStamped_"):
    header: Header_
    audio: AudioData_


@final
@dataclass
class AudioInfo_(IdlStruct, typename="audio_common_msgs::msg::dds_::AudioInfo_"):
    channels: uint8
    sample_rate: uint32
    sample_format: str
    bitrate: uint32
    coding_format: str


class AudioPeer:
    """
    A participant of its own on a loopback domain, speaking to a small_node as any ROS node.

    It writes ``audio``, ``hints`` and their ``*_info`` (any bytes, any stamps, any fields) and
    reads ``enhanced``, all under ``namespace``. The ``*_info`` writers are latched, or with
    ``latched_info=False`` have a ROS 2 publisher's default QoS (reliable, volatile, depth 10).
    """

    def __init__(self, domain_id: int, namespace: str = "/kb", latched_info: bool = True) -> None:
        os.environ["CYCLONEDDS_URI"] = LOOPBACK_XML
        try:
            self.participant = DomainParticipant(domain_id)
        finally:
            del os.environ["CYCLONEDDS_URI"]
        best_effort = [Policy.Reliability.BestEffort, Policy.History.KeepLast(256)]
        if latched_info:
            info_qos = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)),
                           Policy.Durability.TransientLocal, Policy.History.KeepLast(1))
        else:
            info_qos = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)),
                           Policy.Durability.Volatile, Policy.History.KeepLast(10))
        hint_qos = Qos(*best_effort, Policy.Deadline(duration(milliseconds=100)),
                       Policy.Liveliness.Automatic(duration(milliseconds=500)))
        self.audio = self._writer(f"{namespace}/audio", AudioDataStamped_, Qos(*best_effort))
        self.hints = self._writer(f"{namespace}/hints", AudioDataStamped_, hint_qos)
        self.audio_info = self._writer(f"{namespace}/audio_info", AudioInfo_, info_qos)
        self.hint_info = self._writer(f"{namespace}/hint_info", AudioInfo_, info_qos)
        self.enhanced = DataReader(self.participant, Topic(
            self.participant, f"rt{namespace}/enhanced", AudioDataStamped_),
            Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(4096)))
        self.received: list[AudioDataStamped_] = []

    def _writer(self, topic: str, kind: type, qos: Qos) -> DataWriter:
        return DataWriter(self.participant, Topic(self.participant, "rt" + topic, kind), qos)

    def wait_matched(self, timeout_s: float = 30.0) -> None:
        """Wait until the node subscribes to every topic written here (and a little longer)."""
        writers = (self.audio, self.hints, self.audio_info, self.hint_info)
        deadline = time.monotonic() + timeout_s
        while not all(w.get_matched_subscriptions() for w in writers):
            if time.monotonic() > deadline:
                raise TimeoutError("the node did not subscribe")
            time.sleep(0.05)
        time.sleep(0.3)

    @staticmethod
    def send(writer: DataWriter, stamp_ns: int, payload: bytes, frame_id: str = "peer") -> None:
        sec, nanosec = divmod(stamp_ns, 10**9)
        writer.write(AudioDataStamped_(Header_(Time_(sec, nanosec), frame_id),
                                       AudioData_(payload)))

    @staticmethod
    def announce(writer: DataWriter, channels: int = 1, sample_rate: int = 16000,
                 sample_format: str = "F32LE", coding_format: str = "wave") -> None:
        writer.write(AudioInfo_(channels, sample_rate, sample_format, 0, coding_format))

    def collect(self, count: int, timeout_s: float, quiet_s: float = 0.5) -> list[int]:
        """Read ``enhanced`` until ``count`` arrived and none for ``quiet_s``; their stamps."""
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            new = [m for m in self.enhanced.take(N=4096) if m.sample_info.valid_data]
            self.received += new
            if new:
                last_new = time.monotonic()
            elif len(self.received) >= count and time.monotonic() - last_new > quiet_s:
                break
            time.sleep(0.02)
        return [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in self.received]
