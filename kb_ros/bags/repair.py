"""
``kb-ros bag repair``: recover what a recorder flushed before it was killed.

rosbags writes ``metadata.yaml`` (and the mcap summary and footer) only when a bag is closed,
and cannot open a bag without them, so a killed recording needs this step. The storage file is
fixed up in a temporary copy (the original is left as it is) and copied message by message into
a new, complete bag: for mcap, everything up to the last complete record is kept and a footer
without summary is appended (rosbags then finds the messages by scanning); for sqlite3, SQLite
itself rolls back a transaction the kill interrupted, leaving every committed message.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path

from kb_ros.bags.errors import BagError
from kb_ros.bags.reader import BagReader, storage_file
from kb_ros.bags.writer import BagWriter

MCAP_MAGIC = b"\x89MCAP0\r\n"
RECORD_HEADER = 9  # opcode (1 byte) and record length (uint64 LE)
OP_FOOTER, OP_DATA_END = 0x02, 0x0F
# DataEnd with no CRC, then a footer saying "no summary" (summary_start 0), then the magic.
MCAP_TAIL = (bytes([OP_DATA_END]) + (4).to_bytes(8, "little") + bytes(4)
             + bytes([OP_FOOTER]) + (20).to_bytes(8, "little") + bytes(20) + MCAP_MAGIC)


def complete_mcap_length(path: Path) -> int:
    """Bytes from the start of an mcap file to the end of its last complete data record."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            raise BagError(f"{path} is not an mcap file (or nothing was flushed to it)")
        end = len(MCAP_MAGIC)
        while True:
            header = f.read(RECORD_HEADER)
            if len(header) < RECORD_HEADER or header[0] in (OP_DATA_END, OP_FOOTER):
                return end
            record_end = end + RECORD_HEADER + int.from_bytes(header[1:], "little")
            if record_end > size:
                return end
            end = record_end
            f.seek(end)


def _close_mcap(src: Path, dst: Path) -> None:
    length = complete_mcap_length(src)
    shutil.copyfile(src, dst)
    with dst.open("r+b") as f:
        f.truncate(length)
        f.seek(length)
        f.write(MCAP_TAIL)


def _settle_sqlite(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    journal = src.with_name(src.name + "-journal")
    if journal.exists():
        shutil.copyfile(journal, dst.with_name(dst.name + "-journal"))
    try:
        with sqlite3.connect(dst) as conn:  # the first read rolls a hot journal back
            conn.execute("SELECT count(*) FROM messages").fetchone()
        conn.close()
    except sqlite3.Error as err:
        raise BagError(f"{src}: not a readable rosbag2 sqlite3 file: {err}") from None


def repair_bag(src: str | Path, out: str | Path) -> dict:
    """
    Write the recoverable messages of ``src`` to the new complete bag ``out``.

    ``src`` is a bag directory or its storage file; ``out`` gets the same storage. Returns
    per-topic counts.
    """
    src_file = storage_file(Path(src))
    storage = "mcap" if src_file.suffix == ".mcap" else "sqlite3"
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / src_file.name
        (_close_mcap if storage == "mcap" else _settle_sqlite)(src_file, fixed)
        with BagReader(fixed) as reader, BagWriter(out, storage) as writer:
            topics = {conn.id: writer.add_raw_topic(conn) for conn in reader.connections}
            for conn, time_ns, data in reader.raw_messages():
                writer.write_raw(topics[conn.id], time_ns, data)
                counts[conn.topic] = counts.get(conn.topic, 0) + 1
    return {"bag": str(out), "storage": storage, "counts": counts}
