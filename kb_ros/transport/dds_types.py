"""
Cyclone DDS wire types byte-compatible with ROS 2 nodes on rmw_cyclonedds_cpp.

rmw_cyclonedds names the DDS type of ``pkg/msg/Name`` ``pkg::msg::dds_::Name_`` and encodes it as
a @final, key-less struct in plain CDR (XCDR1); peers match on the type name alone, so a layout
error would decode as garbage: ``test/test_cdr.py`` checks every type against rosbags' encoder.

``uint8[]`` is ``sequence[uint8]``, which cyclonedds (de)serializes through a Python list of
ints. A plain ``bytes`` field would copy the buffer in one go, but cyclonedds 11.0.1 cannot build
the XTypes type object a Topic needs for it; so the type is declared as a sequence and
``_octets_as_bytes`` swaps in cyclonedds' bytes codec for the encoding only (same CDR bytes).
For a 128-sample float32 chunk that halves the cost (~13 us to serialize, ~14 us to
deserialize, against ~24/23 us through the list). If a later cyclonedds lays its codecs out
differently, the swap is skipped (the list path stays correct: conversions accept either form)
and ``test_uint8_sequence_uses_the_bytes_fast_path`` flags it.

``AudioDataStamped``, three messages of every chunk on the device, goes further: its
``serialize``/``deserialize`` pack and unpack plain little-endian CDR with ``struct`` in one
pass (~3 us each instead of ~15 through cyclonedds' field machines; same bytes, checked against
rosbags in ``test/test_cdr.py``). Anything else (big-endian or XCDR2 data, other arguments,
a payload whose lengths do not add up) goes through cyclonedds' generic codec as before.
"""

# No ``from __future__ import annotations``: cyclonedds reads the field types at class creation.
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from cyclonedds.idl import IdlStruct
from cyclonedds.idl._support import Endianness
from cyclonedds.idl._machinery import (BytesMachine, PlainCdrV2SequenceOfPrimitiveMachine,
                                       StructMachine)
from cyclonedds.idl.annotations import final
from cyclonedds.idl.types import byte, int32, sequence, uint8, uint32

from kb_ros.audio.clock import join_stamp
from kb_ros.transport.messages import (AUDIO_INFO, AUDIO_STAMPED, DIAGNOSTIC_ARRAY, AudioChunkMsg,
                                       AudioInfoMsg, DiagnosticArrayMsg, DiagnosticStatusMsg)


@final
@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32 = 0
    nanosec: uint32 = 0


@final
@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@final
@dataclass
class AudioData(IdlStruct, typename="audio_common_msgs::msg::dds_::AudioData_"):
    data: sequence[uint8] = b""  # bytes after _octets_as_bytes, else a list of ints


def _octets_as_bytes(cls: type[IdlStruct], name: str) -> None:
    """Encode the ``sequence[uint8]`` field ``name`` from/to ``bytes`` (see module docstring)."""
    cls.__idl__.populate()
    for machine in (cls.__idl__.v1_machine, cls.__idl__.v2_machine):
        if not (isinstance(machine, StructMachine) and isinstance(
                machine.members_machines.get(name), PlainCdrV2SequenceOfPrimitiveMachine)):
            return
    for machine in (cls.__idl__.v1_machine, cls.__idl__.v2_machine):
        machine.members_machines[name] = BytesMachine()


_octets_as_bytes(AudioData, "data")


CDR_LE = b"\x00\x01"  # encapsulation kind of plain little-endian CDR (XCDR1)
_STAMP_AND_ID_LENGTH = struct.Struct("<2s2xiII")  # encapsulation, sec, nanosec, len(frame_id)
_LENGTH = struct.Struct("<I")


@final
@dataclass
class AudioDataStamped(IdlStruct, typename="audio_common_msgs::msg::dds_::AudioDataStamped_"):
    header: Header = field(default_factory=Header)
    audio: AudioData = field(default_factory=AudioData)

    def serialize(self, buffer: Any = None, endianness: Any = None,
                  use_version_2: Optional[bool] = None) -> bytes:
        """Plain little-endian CDR in one pass (what the DataWriter calls for every chunk)."""
        if buffer is not None or use_version_2 or endianness not in (None, Endianness.Little):
            return super().serialize(buffer, endianness, use_version_2)
        frame_id = self.header.frame_id.encode("utf-8") + b"\0"
        head = _STAMP_AND_ID_LENGTH.pack(CDR_LE, self.header.stamp.sec,
                                         self.header.stamp.nanosec, len(frame_id))
        data = self.audio.data
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        return b"".join((head, frame_id, b"\0" * (-len(frame_id) % 4),
                         _LENGTH.pack(len(data)), data))

    @classmethod
    def deserialize(cls, data: bytes, has_header: bool = True,
                    use_version_2: Optional[bool] = None) -> "AudioDataStamped":
        """Plain little-endian CDR in one pass (what the DataReader calls for every chunk)."""
        size = len(data)
        if has_header and use_version_2 is None and size >= 20 and data[:2] == CDR_LE:
            _, sec, nanosec, id_length = _STAMP_AND_ID_LENGTH.unpack_from(data)
            at = 16 + id_length + (-id_length % 4)
            if 0 < id_length and at + 4 <= size and data[15 + id_length] == 0:
                end = at + 4 + _LENGTH.unpack_from(data, at)[0]
                if end <= size:
                    return cls(Header(Time(sec, nanosec), bytes(data[16:15 + id_length]).decode()),
                               AudioData(bytes(data[at + 4:end])))
        return super().deserialize(data, has_header, use_version_2)


@final
@dataclass
class AudioInfo(IdlStruct, typename="audio_common_msgs::msg::dds_::AudioInfo_"):
    channels: uint8 = 0
    sample_rate: uint32 = 0
    sample_format: str = ""
    bitrate: uint32 = 0
    coding_format: str = ""


@final
@dataclass
class KeyValue(IdlStruct, typename="diagnostic_msgs::msg::dds_::KeyValue_"):
    key: str = ""
    value: str = ""


@final
@dataclass
class DiagnosticStatus(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticStatus_"):
    level: byte = 0  # ROS ``byte`` is an IDL octet
    name: str = ""
    message: str = ""
    hardware_id: str = ""
    values: sequence[KeyValue] = field(default_factory=list)


@final
@dataclass
class DiagnosticArray(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticArray_"):
    header: Header = field(default_factory=Header)
    status: sequence[DiagnosticStatus] = field(default_factory=list)


def split_stamp(stamp_ns: int) -> Time:
    """Split integer nanoseconds into a ``builtin_interfaces/Time`` (floor, as rclpy does)."""
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def chunk_to_wire(msg: AudioChunkMsg) -> AudioDataStamped:
    return AudioDataStamped(Header(split_stamp(msg.stamp_ns), msg.frame_id),
                            AudioData(bytes(msg.data)))


def chunk_from_wire(wire: AudioDataStamped) -> AudioChunkMsg:
    stamp = wire.header.stamp
    return AudioChunkMsg(join_stamp(stamp.sec, stamp.nanosec), bytes(wire.audio.data),
                         wire.header.frame_id)


def info_to_wire(msg: AudioInfoMsg) -> AudioInfo:
    return AudioInfo(msg.channels, msg.sample_rate, msg.sample_format, msg.bitrate,
                     msg.coding_format)


def info_from_wire(wire: AudioInfo) -> AudioInfoMsg:
    return AudioInfoMsg(wire.channels, wire.sample_rate, wire.sample_format, wire.bitrate,
                        wire.coding_format)


def diagnostics_to_wire(msg: DiagnosticArrayMsg) -> DiagnosticArray:
    return DiagnosticArray(Header(split_stamp(msg.stamp_ns), ""), [
        DiagnosticStatus(s.level, s.name, s.message, s.hardware_id,
                         [KeyValue(k, v) for k, v in s.values.items()])
        for s in msg.status])


def diagnostics_from_wire(wire: DiagnosticArray) -> DiagnosticArrayMsg:
    return DiagnosticArrayMsg(join_stamp(wire.header.stamp.sec, wire.header.stamp.nanosec), [
        DiagnosticStatusMsg(s.level, s.name, s.message, s.hardware_id,
                            {kv.key: kv.value for kv in s.values})
        for s in wire.status])


class MalformedSample:
    """
    Stands in for a sample whose bytes do not decode as its type (a broken or hostile writer).

    cyclonedds deserializes inside ``DataReader.take``, so an exception there would lose the
    batch's other samples and end the node's spin; the reader gets this instead, and the
    backend counts and logs the drop.
    """

    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name, self.error = type_name, error
        self.sample_info: Any = None  # set by DataReader.take, as on a real sample


def _tolerant(cls: type[IdlStruct]) -> None:
    """Make ``cls.deserialize`` return a ``MalformedSample`` instead of raising."""
    strict = cls.deserialize

    def deserialize(data: bytes, has_header: bool = True,
                    use_version_2: Optional[bool] = None) -> Any:
        try:
            return strict(data, has_header, use_version_2)
        except Exception as err:  # any codec error: the bytes are not a sample of this type
            return MalformedSample(cls.__name__, err)

    cls.deserialize = staticmethod(deserialize)  # type: ignore[method-assign]


for _type in (AudioDataStamped, AudioInfo, DiagnosticArray):
    _tolerant(_type)


@dataclass(frozen=True)
class WireCodec:
    """How one neutral message type travels on DDS: its IdlStruct and the two conversions."""

    idl_type: type[IdlStruct]
    to_wire: Callable[[Any], IdlStruct]
    from_wire: Callable[[Any], Any]


CODECS = {
    AUDIO_STAMPED: WireCodec(AudioDataStamped, chunk_to_wire, chunk_from_wire),
    AUDIO_INFO: WireCodec(AudioInfo, info_to_wire, info_from_wire),
    DIAGNOSTIC_ARRAY: WireCodec(DiagnosticArray, diagnostics_to_wire, diagnostics_from_wire),
}
