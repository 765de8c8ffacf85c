"""
Reading rosbag2 bags (directories or single .mcap/.db3 files) into neutral messages.

Any bag a ROS 2 tool or rosbags wrote reads here, decoded with the type definitions stored in
the bag (Humble's interfaces plus audio_common_msgs for bags that store none), so a same-named
but different type fails clearly instead of decoding as garbage. Every failure, including
the odd exception a corrupt file provokes inside rosbags, becomes a ``BagError`` naming the bag.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rosbags.highlevel import AnyReader
from rosbags.interfaces import Connection, Qos

from kb_ros.bags.convert import SUPPORTED_TYPES, MessageCodec
from kb_ros.bags.errors import BagError

STORAGE_SUFFIXES = (".mcap", ".db3")
FILE_SUFFIXES = (*STORAGE_SUFFIXES, ".bag")  # files read on their own (.bag: ROS 1)
NEWEST_METADATA_VERSION = 9  # rosbag2 metadata versions rosbags 0.11 reads (Jazzy writes 9)
_METADATA_VERSION = re.compile(r"^\s*version:\s*(\d+)", re.MULTILINE)


def storage_file(path: Path) -> Path:
    """Return the one .mcap/.db3 of a bag directory (or ``path`` itself if it is one)."""
    if path.is_file() and path.suffix in STORAGE_SUFFIXES:
        return path
    files = sorted(p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES) \
        if path.is_dir() else []
    if len(files) != 1:
        raise BagError(f"{path}: expected one .mcap or .db3 storage file, found "
                       f"{[p.name for p in files]}")
    return files[0]


def metadata_version(path: Path) -> int | None:
    """Return the rosbag2 metadata version of a bag directory, None if it has no readable one."""
    try:
        found = _METADATA_VERSION.search((path / "metadata.yaml").read_text(errors="replace"))
    except OSError:
        return None
    return int(found.group(1)) if found else None


@dataclass
class TopicSummary:
    name: str
    msg_type: str
    count: int
    qos: list[Qos]


class BagReader:
    """An open bag; a context manager. Messages come in bag-time (receive) order."""

    def __init__(self, path: str | Path, codec: MessageCodec | None = None) -> None:
        self.path = Path(path)
        self.codec = codec or MessageCodec()
        if not self.path.exists():
            raise BagError(f"no bag at {self.path}")
        if self.path.name == "metadata.yaml":
            self.path = self.path.parent  # the bag is the directory it describes
        elif self.path.is_file() and self.path.suffix not in FILE_SUFFIXES:
            raise BagError(f"{self.path} is not a bag file: pass the bag directory (with its "
                           "metadata.yaml), a .mcap or .db3 file, or a ROS 1 .bag")
        if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
            if not any(p.suffix in STORAGE_SUFFIXES for p in self.path.iterdir()):
                raise BagError(f"{self.path} is not a rosbag2 bag: no metadata.yaml, no "
                               f"{' or '.join(STORAGE_SUFFIXES)} file")
            raise BagError(f"{self.path} has no metadata.yaml: its recording was not closed "
                           f"(killed?). Recover what was flushed with "
                           f"`kb-ros bag repair {self.path} -o FIXED`")
        try:
            self._reader = self._open(self._readable_path())
        except BagError:
            raise
        except Exception as err:  # rosbags raises many kinds on corrupt files
            raise self._error("cannot open", err) from None
        self.topics: dict[str, TopicSummary] = {}
        for conn in self._reader.connections:
            known = self.topics.get(conn.topic)
            count = conn.msgcount + (known.count if known else 0)
            qos = list(getattr(conn.ext, "offered_qos_profiles", []))
            self.topics[conn.topic] = TopicSummary(conn.topic, conn.msgtype, count, qos)

    def _readable_path(self) -> Path:
        """
        Return the bag itself, or for a newer rosbag2's bag its storage file.

        rosbags refuses a metadata.yaml newer than it knows, though the storage file carries
        all a replay needs (topics, types, QoS for mcap): it is read on its own.
        """
        version = metadata_version(self.path) if self.path.is_dir() else None
        if version is not None and version > NEWEST_METADATA_VERSION:
            return storage_file(self.path)
        return self.path

    def _open(self, path: Path) -> AnyReader:
        """
        Open with the bag's own definitions, and ours for types it stores none of.

        rosbags takes the default definitions only when no connection has one, but rosbag2
        stores an empty one for a type it could not find on the recording machine (a robot
        without audio_common_msgs' .msg files) beside full ones for the others.
        """
        reader = AnyReader([path], default_typestore=self.codec.store)
        reader.open()
        known = reader.typestore.fielddefs
        if any(conn.msgtype not in known for conn in reader.connections):  # 0.1 s: only then
            reader.typestore.register({name: fields for name, fields
                                       in self.codec.store.fielddefs.items() if name not in known})
        return reader

    def _error(self, action: str, err: Exception) -> BagError:
        detail = (str(err) or type(err).__name__).splitlines()[0]
        hint = ""
        if self.path.is_dir() and any(self.path.glob("*.mcap")):
            hint = f"; if a recording was cut short, try `kb-ros bag repair {self.path} -o FIXED`"
        return BagError(f"{self.path}: {action}: {detail} (corrupt or truncated bag?){hint}")

    @property
    def start_ns(self) -> int:
        return self._reader.start_time if self._reader.message_count else 0

    @property
    def end_ns(self) -> int:
        return self._reader.end_time if self._reader.message_count else 0

    @property
    def connections(self) -> list[Connection]:
        return list(self._reader.connections)

    @property
    def message_count(self) -> int:
        return self._reader.message_count

    def require(self, topic: str, msg_type: str) -> None:
        """Fail clearly when ``topic`` is missing or not of ``msg_type``."""
        summary = self.topics.get(topic)
        if summary is None:
            raise BagError(f"{self.path} has no topic {topic}; it has {sorted(self.topics)}")
        if summary.msg_type != msg_type:
            stamped = [name for name, other in sorted(self.topics.items())
                       if other.msg_type == msg_type]
            hint = (f"; the bag's {msg_type} topics: {stamped}" if stamped else
                    "; kb_ros matches hints to audio by header stamps, so it needs stamped "
                    "audio (audio_capture publishes audio_stamped beside audio)")
            raise BagError(f"{topic} in {self.path} is {summary.msg_type}, not {msg_type}"
                           + hint)

    def raw_messages(self, topics: Iterable[str] | None = None
                     ) -> Iterator[tuple[Connection, int, bytes]]:
        """Yield ``(connection, bag time ns, CDR bytes)`` of ``topics`` (all when None)."""
        wanted = None if topics is None else set(topics)
        connections = [c for c in self.connections if wanted is None or c.topic in wanted]
        if not connections:
            return  # rosbags reads an empty selection as "every topic"
        read: dict[str, int] = dict.fromkeys((c.topic for c in connections), 0)
        try:
            for connection, time_ns, data in self._reader.messages(connections=connections):
                read[connection.topic] += 1
                yield connection, time_ns, data
        except Exception as err:  # a corrupt record anywhere in the file
            raise self._error("cannot read messages", err) from None
        # A damaged mcap index can hide messages without any error: compare with the counts.
        short = {t: f"{n} of {self.topics[t].count}" for t, n in read.items()
                 if n < self.topics[t].count}
        if short:
            raise self._error("messages missing", ValueError(f"read only {short}"))

    def messages(self, topics: Iterable[str]) -> Iterator[tuple[str, int, Any]]:
        """
        ``(topic, bag time ns, neutral message)`` of ``topics``.

        The topics must all exist and have a type kb_ros understands.
        """
        topics = list(topics)
        for topic in topics:
            if topic not in self.topics:
                raise BagError(f"{self.path} has no topic {topic}; it has {sorted(self.topics)}")
            if self.topics[topic].msg_type not in SUPPORTED_TYPES:
                raise BagError(f"{topic} in {self.path} is {self.topics[topic].msg_type}; "
                               f"kb_ros reads {list(SUPPORTED_TYPES)}")
        for connection, time_ns, data in self.raw_messages(topics):
            try:
                ros = self._reader.deserialize(data, connection.msgtype)
            except Exception as err:  # bytes that do not match the type
                raise self._error(f"cannot decode a {connection.topic} message at "
                                  f"{time_ns} ns", err) from None
            try:
                msg = self.codec.from_ros(connection.msgtype, ros)
            except (AttributeError, KeyError, TypeError) as err:  # a same-named other type
                fields = [name for name in getattr(ros, "__dataclass_fields__", {})
                          if not name.startswith("_")]
                raise BagError(f"{self.path}: the {connection.msgtype} on {connection.topic} "
                               f"has the fields {fields}, not those kb_ros reads (another "
                               f"package of the same name?; {err})") from None
            yield connection.topic, time_ns, msg

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
