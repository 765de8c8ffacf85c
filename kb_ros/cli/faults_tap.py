"""
A wire tap for the fault scenarios: every sample of some topics with its writer's publish time.

``TopicRecorder`` stamps a message when the recorder's thread gets to it, which on a loaded
machine can be tens of ms late and bunches messages of different topics together. The fault
analysis orders hints against chunks to the chunk, so it uses DDS's source timestamp instead:
the time the publishing node wrote the sample, on the same machine's clock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from cyclonedds.core import InstanceState, ReadCondition, SampleState, ViewState, WaitSet
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from kb_ros.transport import qos as qos_profiles
from kb_ros.transport.dds_backend import DDS_TOPIC_PREFIX, dds_qos
from kb_ros.transport.dds_config import DdsConfig, build_config_xml, open_participant
from kb_ros.transport.dds_types import CODECS, WireCodec
from kb_ros.transport.qos import QosSpec, Reliability

_ANY_SAMPLE = SampleState.Any | ViewState.Any | InstanceState.Any
TAP_DEPTH = 100_000  # 13 minutes of chunks
# The nodes' stream writers are reliable: a reliable tap gets lost samples sent again. A
# best-effort one (as the nodes subscribe) missed one audio chunk in a loaded run of
# cpu_overload, failing the node for what the observer lost.
TAP_STREAM_QOS = replace(qos_profiles.AUDIO_SUB, reliability=Reliability.RELIABLE)


@dataclass
class Tapped:
    """One sample: when its writer published it and when the tap took it (ns, system clock)."""

    source_ns: int
    arrival_ns: int
    msg: Any


@dataclass
class TapLog:
    topic: str
    messages: list[Tapped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.messages)


@dataclass
class _Reader:
    reader: DataReader
    condition: ReadCondition
    codec: WireCodec
    log: TapLog


class WireTap:
    """Readers on a loopback DDS domain, drained by one background thread; a context manager."""

    def __init__(self, domain_id: int) -> None:
        self._participant = open_participant(
            DdsConfig(domain_id, build_config_xml(), "loopback only"))
        self._waitset = WaitSet(self._participant)
        self._readers: list[_Reader] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="kb_ros-tap", daemon=True)

    def record(self, msg_type: str, topic: str, qos: QosSpec = TAP_STREAM_QOS) -> TapLog:
        """
        Start keeping every sample of ``topic`` (an absolute ROS name).

        The reader keeps up to ``TAP_DEPTH`` samples: a tap starved of CPU for a while must
        catch up, never lose what the nodes published.
        """
        codec = CODECS[msg_type]
        dds_topic = Topic(self._participant, DDS_TOPIC_PREFIX + topic, codec.idl_type)
        reader = DataReader(self._participant, dds_topic,
                            dds_qos(replace(qos, depth=TAP_DEPTH), writer=False))
        condition = ReadCondition(reader, _ANY_SAMPLE)
        self._waitset.attach(condition)
        entry = _Reader(reader, condition, codec, TapLog(topic))
        self._readers.append(entry)
        return entry.log

    def start(self) -> "WireTap":
        self._thread.start()
        return self

    def _drain(self) -> None:
        while not self._stop.is_set():
            self._waitset.wait(duration(milliseconds=50))
            for entry in self._readers:
                for sample in entry.reader.take(256, condition=entry.condition):
                    if sample.sample_info.valid_data:
                        entry.log.messages.append(Tapped(sample.sample_info.source_timestamp,
                                                         time.time_ns(),
                                                         entry.codec.from_wire(sample)))

    def wait_for(self, log: TapLog, count: int, timeout_s: float) -> bool:
        """Wait until ``log`` holds at least ``count`` samples; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while len(log) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        """Stop draining and delete the participant (and so every reader)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self._participant.__del__()

    def __enter__(self) -> "WireTap":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
