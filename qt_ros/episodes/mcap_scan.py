"""Reading an MCAP file record by record, up to its first damaged byte.

A complete MCAP file is read through its index (:mod:`qt_ros.episodes.bag_reader`); a file left
without its summary by a killed writer, or damaged in the middle, has no usable index. Scanning
its records in file order still recovers every message before the damage: what the reader of an
incomplete bag and ``qt-ros repair`` need.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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
    """A topic and its message type."""

    topic: str
    msgtype: str


class MessageRecord(NamedTuple):
    """One serialized message: topic, type, log time (ns since the epoch) and CDR bytes."""

    topic: str
    msgtype: str
    log_time: int
    data: bytes


McapRecord = SchemaRecord | ChannelRecord | MessageRecord


def mcap_records(path: Path, *, problems: list[str] | None,
                 registry: Typestore | None = None) -> Iterator[McapRecord]:
    """Read an MCAP file record by record, stopping quietly at the first damaged byte.

    Yields a :class:`SchemaRecord`, :class:`ChannelRecord` or :class:`MessageRecord` per record
    (messages of channels never declared are skipped). Schemas are also registered in
    ``registry``. ``problems`` gets a sentence on where reading stopped.
    """
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader

    schemas: dict[int, Any] = {}
    channels: dict[int, ChannelRecord] = {}
    count = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        reader = StreamReader(f, skip_magic=False, emit_chunks=False)
        try:
            for rec in reader.records:
                if isinstance(rec, Schema):
                    schemas[rec.id] = rec
                    if registry is not None:
                        register_schema(registry, rec)
                    yield SchemaRecord(rec.name, rec.encoding,
                                       rec.data.decode("utf-8", errors="replace"))
                elif isinstance(rec, Channel):
                    schema = schemas.get(rec.schema_id)
                    channel = ChannelRecord(rec.topic, schema.name if schema is not None else "")
                    channels[rec.id] = channel
                    yield channel
                elif isinstance(rec, Message):
                    channel = channels.get(rec.channel_id)
                    if channel is None or not channel.topic:
                        continue
                    count += 1
                    yield MessageRecord(channel.topic, channel.msgtype, rec.log_time, rec.data)
        except Exception as exc:  # the end of a truncated file, or a damaged chunk
            if problems is not None:
                why = f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''}"
                if f.tell() >= size:
                    problems.append(f"{path.name} ends after {count} messages ({size} bytes) "
                                    f"without its MCAP summary ({why})")
                else:
                    problems.append(f"{path.name} is damaged at byte {f.tell()} of {size} "
                                    f"({why}); the {count} messages before are readable")
