"""
Neutral messages <-> rosbags messages and CDR bytes, and kb_ros QoS -> rosbag2 QoS metadata.

Bags store the same CDR a ROS 2 node publishes; converting through rosbags' typestore (core
interfaces of Humble plus audio_common_msgs from their .msg text) keeps bags readable by
``ros2 bag`` and by any other rosbag2 tool.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                QosTime)
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from kb_ros.audio.clock import NS_PER_S, join_stamp
from kb_ros.transport.messages import (AUDIO_INFO, AUDIO_STAMPED, DIAGNOSTIC_ARRAY,
                                       AudioChunkMsg, AudioInfoMsg, DiagnosticArrayMsg,
                                       DiagnosticStatusMsg)
from kb_ros.transport.qos import Durability, QosSpec, Reliability
from kb_ros.transport.ros_msg_defs import register_audio_common_msgs

SUPPORTED_TYPES = (AUDIO_STAMPED, AUDIO_INFO, DIAGNOSTIC_ARRAY)


def make_typestore() -> Typestore:
    """Humble's interfaces plus audio_common_msgs: what a Humble ``ros2 bag`` expects."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    register_audio_common_msgs(store)
    return store


def _time(store: Typestore, stamp_ns: int) -> Any:
    sec, nanosec = divmod(stamp_ns, NS_PER_S)
    return store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def _header(store: Typestore, stamp_ns: int, frame_id: str) -> Any:
    return store.types["std_msgs/msg/Header"](stamp=_time(store, stamp_ns), frame_id=frame_id)


def _stamp_ns(header: Any) -> int:
    return join_stamp(header.stamp.sec, header.stamp.nanosec)


class MessageCodec:
    """Converts the neutral messages of ``kb_ros.transport.messages`` to and from CDR."""

    def __init__(self, store: Typestore | None = None) -> None:
        self.store = store or make_typestore()

    def to_ros(self, msg_type: str, msg: Any) -> Any:
        types = self.store.types
        if msg_type == AUDIO_STAMPED:
            return types[AUDIO_STAMPED](
                header=_header(self.store, msg.stamp_ns, msg.frame_id),
                audio=types["audio_common_msgs/msg/AudioData"](
                    data=np.frombuffer(msg.data, dtype=np.uint8)))
        if msg_type == AUDIO_INFO:
            return types[AUDIO_INFO](channels=msg.channels, sample_rate=msg.sample_rate,
                                     sample_format=msg.sample_format, bitrate=msg.bitrate,
                                     coding_format=msg.coding_format)
        if msg_type == DIAGNOSTIC_ARRAY:
            key_value = types["diagnostic_msgs/msg/KeyValue"]
            status = [types["diagnostic_msgs/msg/DiagnosticStatus"](
                level=st.level, name=st.name, message=st.message, hardware_id=st.hardware_id,
                values=[key_value(key=k, value=v) for k, v in st.values.items()])
                for st in msg.status]
            return types[DIAGNOSTIC_ARRAY](header=_header(self.store, msg.stamp_ns, ""),
                                           status=status)
        raise ValueError(f"cannot convert {msg_type}; supported: {list(SUPPORTED_TYPES)}")

    def from_ros(self, msg_type: str, ros: Any) -> Any:
        """Return the neutral message for a deserialized rosbags message of ``msg_type``."""
        if msg_type == AUDIO_STAMPED:
            return AudioChunkMsg(_stamp_ns(ros.header), np.asarray(ros.audio.data).tobytes(),
                                 ros.header.frame_id)
        if msg_type == AUDIO_INFO:
            return AudioInfoMsg(ros.channels, ros.sample_rate, ros.sample_format, ros.bitrate,
                                ros.coding_format)
        if msg_type == DIAGNOSTIC_ARRAY:
            return DiagnosticArrayMsg(_stamp_ns(ros.header), [
                DiagnosticStatusMsg(int(st.level), st.name, st.message, st.hardware_id,
                                    {kv.key: kv.value for kv in st.values})
                for st in ros.status])
        raise ValueError(f"cannot convert {msg_type}; supported: {list(SUPPORTED_TYPES)}")

    def serialize(self, msg_type: str, msg: Any) -> bytes:
        return bytes(self.store.serialize_cdr(self.to_ros(msg_type, msg), msg_type))

    def deserialize(self, msg_type: str, data: bytes) -> Any:
        """Return the neutral message in CDR bytes; raise rosbags' SerdeError if malformed."""
        return self.from_ros(msg_type, self.store.deserialize_cdr(data, msg_type))


def _duration(ms: float | None) -> QosTime:
    """rosbag2's "not set" duration is 0; kb_ros uses None for it."""
    if ms is None:
        return QosTime(0, 0)
    sec, nsec = divmod(round(ms * 1e6), NS_PER_S)
    return QosTime(sec, nsec)


def rosbag_qos(spec: QosSpec) -> Qos:
    """Return the offered QoS profile ``ros2 bag play`` reuses for its publisher of a topic."""
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=spec.depth,
        reliability=(QosReliability.RELIABLE if spec.reliability is Reliability.RELIABLE
                     else QosReliability.BEST_EFFORT),
        durability=(QosDurability.TRANSIENT_LOCAL
                    if spec.durability is Durability.TRANSIENT_LOCAL else QosDurability.VOLATILE),
        deadline=_duration(spec.deadline_ms),
        lifespan=_duration(spec.lifespan_ms),
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=_duration(spec.liveliness_lease_ms),
        avoid_ros_namespace_conventions=False,
    )
