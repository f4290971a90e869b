"""Reading an MCAP file record by record, past damaged chunks; checking its CRCs.

A complete MCAP file is read through its index (:mod:`qt_ros.episodes.bag_reader`); a file left
without its summary by a killed writer, or damaged in the middle, has no usable index. Scanning
its records in file order still recovers every message of every intact chunk: what the reader of
an incomplete bag and ``qt-ros repair`` need. A chunk whose records fail its CRC (or do not
decompress) is skipped and reported; scanning stops where the records themselves stop making
sense (a cut-off end, a damaged record length).

:func:`check_crcs` checks a complete file against every CRC it carries (the data section's, each
chunk's, the summary's) without decoding a message: what ``qt-ros convert`` and
``qt-ros repair --check`` run before trusting a bag. Bags written before qt_ros wrote CRCs (or by
writers that leave them out, CRC 0) pass unchecked.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from rosbags.typesys.store import Typestore

from qt_ros.episodes.bag_typestore import register_schema


class SchemaRecord(NamedTuple):
    """A message definition: type name, encoding ("ros2msg" or "ros2idl") and its text."""

    name: str
    encoding: str
    text: str


class ChannelRecord(NamedTuple):
    """A topic, its message type and its MCAP channel metadata (QoS profiles, type hash)."""

    topic: str
    msgtype: str
    metadata: Mapping[str, str]


class MessageRecord(NamedTuple):
    """One serialized message: topic, type, log time (ns since the epoch) and CDR bytes."""

    topic: str
    msgtype: str
    log_time: int
    data: bytes


McapRecord = SchemaRecord | ChannelRecord | MessageRecord


def mcap_records(path: Path, *, problems: list[str] | None,
                 registry: Typestore | None = None,
                 damage: list[str] | None = None) -> Iterator[McapRecord]:
    """Read an MCAP file record by record, skipping damaged chunks, stopping quietly where the
    records end or stop making sense.

    Yields a :class:`SchemaRecord`, :class:`ChannelRecord` or :class:`MessageRecord` per record
    (messages of channels never declared are skipped). Schemas are also registered in
    ``registry``. ``problems`` gets a sentence on each skipped chunk and on where reading
    stopped; ``damage`` only the sentences on damage (a skipped chunk, records that stop making
    sense before the end of the file), not on a file that is merely cut short.
    """
    from mcap.records import Channel, Chunk, Message, Schema
    from mcap.stream_reader import StreamReader, breakup_chunk

    schemas: dict[int, Any] = {}
    channels: dict[int, ChannelRecord] = {}
    notes: list[str] = []
    count = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        reader = StreamReader(f, skip_magic=False, emit_chunks=True)
        try:
            for outer in reader.records:
                records = [outer]
                if isinstance(outer, Chunk):
                    try:
                        records = breakup_chunk(outer, validate_crc=True)
                    except Exception as exc:  # noqa: BLE001 - CRC mismatch, corrupt data
                        note = f"{path.name}: {_chunk_name(outer)} is damaged ({_why(exc)})"
                        notes.append(note)
                        if damage is not None:
                            damage.append(note)
                        continue
                for rec in records:
                    if isinstance(rec, Schema):
                        schemas[rec.id] = rec
                        if registry is not None:
                            register_schema(registry, rec)
                        yield SchemaRecord(rec.name, rec.encoding,
                                           rec.data.decode("utf-8", errors="replace"))
                    elif isinstance(rec, Channel):
                        schema = schemas.get(rec.schema_id)
                        channel = ChannelRecord(rec.topic, schema.name if schema else "",
                                                dict(rec.metadata))
                        channels[rec.id] = channel
                        yield channel
                    elif isinstance(rec, Message):
                        channel = channels.get(rec.channel_id)
                        if channel is None or not channel.topic:
                            continue
                        count += 1
                        yield MessageRecord(channel.topic, channel.msgtype, rec.log_time,
                                            rec.data)
        except Exception as exc:  # the end of a truncated file, or damaged records
            if f.tell() >= size:
                notes.append(f"{path.name} ends after {count} messages ({size} bytes) without "
                             f"its MCAP summary ({_why(exc)})")
            else:
                note = (f"{path.name} is damaged at byte {f.tell()} of {size} ({_why(exc)}); "
                        f"the {count} messages before are readable")
                notes.append(note)
                if damage is not None:
                    damage.append(note)
    if problems is not None:
        problems.extend(notes)


def check_crcs(path: Path) -> list[str]:
    """Check a complete MCAP file against its CRCs; returns what is damaged, in words (empty:
    intact, or no CRCs to check). Decodes no message: one CRC over the data section when the file
    has that CRC and it matches; else each chunk's CRC, which also names the damaged chunks."""
    size = path.stat().st_size
    damage = _summary_damage(path, size)
    data_crc, data_end = _data_end(path, size)
    if data_crc:
        crc = 0
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(min(1 << 22, data_end - f.tell())), b""):
                crc = zlib.crc32(block, crc)
        if crc == data_crc:
            return [f"{path.name}: {d}" for d in damage]
    chunks = _damaged_chunks(path)
    if data_crc and not chunks:
        chunks = ["the data section fails its CRC outside the chunks' records"]
    return [f"{path.name}: {d}" for d in chunks + damage]


def _data_end(path: Path, size: int) -> tuple[int, int]:
    """(data-section CRC, offset of the DataEnd record) from the footer; (0, 0) if unknown."""
    with open(path, "rb") as f:
        f.seek(max(0, size - 8 - 29))
        footer = f.read(29)
        if len(footer) < 29 or footer[0] != 0x02:
            return 0, 0
        start = struct.unpack_from("<Q", footer, 9)[0]
        if not 8 + 13 <= start <= size:
            return 0, 0
        f.seek(start - 13)
        opcode, length, crc = struct.unpack("<BQI", f.read(13))
    return (crc, start - 13) if opcode == 0x0F and length == 4 else (0, 0)


def _damaged_chunks(path: Path) -> list[str]:
    """The chunks whose records fail their CRC (or do not decompress), in words."""
    from mcap.records import Chunk, DataEnd
    from mcap.stream_reader import StreamReader, get_chunk_data_stream

    damage = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            for rec in StreamReader(f, skip_magic=False, emit_chunks=True).records:
                if isinstance(rec, Chunk):
                    try:
                        get_chunk_data_stream(rec, validate_crc=True)
                    except Exception as exc:  # noqa: BLE001 - CRC mismatch or corrupt data
                        damage.append(f"{_chunk_name(rec)} is damaged ({_why(exc)})")
                elif isinstance(rec, DataEnd):
                    break
        except Exception as exc:  # noqa: BLE001 - records that stop making sense
            damage.append(f"unreadable at byte {f.tell()} of {size} ({_why(exc)})")
    return damage


def _summary_damage(path: Path, size: int) -> list[str]:
    """The summary section against the footer's CRC (covers the chunk index and statistics)."""
    footer_at = size - 8 - 29  # footer record: opcode, length 20, two offsets, CRC; magic
    if footer_at < 8:
        return ["too short for an MCAP file with a footer"]
    with open(path, "rb") as f:
        f.seek(footer_at)
        opcode, length, start, _, crc = struct.unpack("<BQQQI", f.read(29))
        if opcode != 0x02 or length != 20 or not 8 <= start <= footer_at:
            return ["its footer is damaged"]
        if crc == 0 or start == 0:
            return []
        f.seek(start)
        if zlib.crc32(f.read(size - 8 - 4 - start)) != crc:
            return ["its summary (chunk index, statistics) fails its CRC"]
    return []


def _chunk_name(chunk: Any) -> str:
    return (f"the chunk of messages logged {chunk.message_start_time / 1e9:.3f}-"
            f"{chunk.message_end_time / 1e9:.3f} s")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''}"
