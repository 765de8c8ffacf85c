"""
Writing neutral messages into a new rosbag2 bag (mcap or sqlite3) with rosbags.

Bags are written as rosbag2 metadata version 8, the newest Humble's ``ros2 bag`` parses (v9
changed the QoS serialization), with each topic's offered QoS so ``ros2 bag play`` republishes
latched topics as latched.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.typesys import TypesysError

from kb_ros.bags.convert import MessageCodec, rosbag_qos
from kb_ros.bags.errors import BagError
from kb_ros.transport.qos import QosSpec

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
HUMBLE_BAG_VERSION = 8


class BagWriter:
    """
    Creates the bag directory ``path`` (which must not exist); a context manager.

    ``flush()`` pushes everything written so far to the storage file so that a recording killed
    later keeps it: mcap closes the pending chunk (rosbags otherwise holds up to 1 MiB in
    memory), sqlite3 commits (rosbags otherwise commits only on close). Neither leaves a bag
    rosbags can open by itself: the metadata.yaml (and the mcap summary and footer) are written
    on ``close()`` only; ``kb_ros.bags.repair`` recovers the flushed part.

    Leaving the context on an exception aborts the bag; ``keep_on_error`` False also deletes
    it, for outputs that are worthless half-written (a failed replay: the rerun needs the path).
    """

    def __init__(self, path: str | Path, storage: str = "mcap",
                 codec: MessageCodec | None = None, *, keep_on_error: bool = True) -> None:
        if storage not in STORAGES:
            raise BagError(f"unknown storage {storage!r}; choose from {sorted(STORAGES)}")
        self.path = Path(path)
        self.storage = storage
        self.codec = codec or MessageCodec()
        self.keep_on_error = keep_on_error
        self._topics: dict[str, tuple[str, Connection]] = {}
        self._unflushed = False
        try:
            self._writer = Writer(self.path, version=HUMBLE_BAG_VERSION,
                                  storage_plugin=STORAGES[storage])
            self._writer.open()
        except (WriterError, OSError) as err:
            raise BagError(f"cannot create bag {self.path}: {err}") from None

    def add_topic(self, topic: str, msg_type: str, qos: QosSpec) -> None:
        connection = self._writer.add_connection(topic, msg_type, typestore=self.codec.store,
                                                 offered_qos_profiles=[rosbag_qos(qos)])
        self._topics[topic] = (msg_type, connection)

    def add_raw_topic(self, connection: Connection) -> Connection:
        """
        Add a topic copied from another bag with its QoS (repairs).

        The type definition is the bag's own when it has one with its hash, else generated for
        a type we know.
        """
        try:
            return self._writer.add_connection(
                connection.topic, connection.msgtype, typestore=self.codec.store,
                msgdef=connection.msgdef.data or None, rihs01=connection.digest or None,
                serialization_format=connection.ext.serialization_format,
                offered_qos_profiles=connection.ext.offered_qos_profiles)
        except (WriterError, TypesysError, KeyError) as err:
            raise BagError(f"cannot copy {connection.topic} ({connection.msgtype}) into "
                           f"{self.path}: {err}") from None

    def write(self, topic: str, msg: Any, time_ns: int) -> None:
        """Store ``msg`` on ``topic`` at bag time ``time_ns`` (when it was received)."""
        msg_type, connection = self._topics[topic]
        self.write_raw(connection, time_ns, self.codec.serialize(msg_type, msg))

    def write_raw(self, connection: Connection, time_ns: int, data: bytes) -> None:
        self._writer.write(connection, time_ns, data)
        self._unflushed = True

    def flush(self) -> None:
        if not self._unflushed:
            return  # an mcap chunk without messages would carry an empty time range
        self._unflushed = False
        # rosbags has no public flush: these are its storage writers' own steps of close().
        storage = self._writer.storage
        if self.storage == "mcap":
            if storage.chunk.bio.tell():
                storage.close_chunk()
            storage.bio.flush()
        else:
            storage.conn.commit()

    def close(self) -> None:
        """Write the index and metadata.yaml: from here on the bag is complete."""
        self._writer.close()

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
            return
        if self.keep_on_error:
            self._writer.abort()
        else:
            self.discard()

    def discard(self) -> None:
        """Abort the bag and remove what it wrote (the writer made the folder: it was new)."""
        self._writer.abort()
        shutil.rmtree(self.path, ignore_errors=True)
