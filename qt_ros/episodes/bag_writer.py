"""Writing episode bags: rosbag2 directories with MCAP storage, from serialized CDR messages.

Writing takes serialized CDR bytes (what an rclpy ``raw=True`` subscription delivers), so a message
is never deserialized on the robot. The MCAP chunk being filled is closed and flushed at least every
``flush_period`` seconds: a process killed at any moment leaves a file that reads back up to its
last flushed chunk. Such a bag has no ``metadata.yaml`` (rosbags writes it on close) and no MCAP
summary; :class:`~qt_ros.episodes.bag_reader.BagReader` reads it record by record and says it is
incomplete, and ``qt-ros repair`` rewrites it into a complete bag.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
from rosbags.typesys.store import Typestore

from qt_ros.episodes.bag_metadata import BagError
from qt_ros.episodes.interfaces import make_typestore

COMPRESSIONS = ("none", "zstd")


class BagWriter:
    """One rosbag2 directory with MCAP storage, written from serialized CDR messages.

    Args:
        path: the bag directory to create (must not exist).
        typestore: gives the definition and hash of each message type (see ``add_topic``).
        compression: "none" or "zstd" (MCAP chunk compression; readers decompress on the fly).
        flush_period: close and flush the pending chunk at least this often (seconds), which
            bounds what a crash can lose. 0 flushes after every message (slow; tests).
        fsync: also ``fsync`` after each flush (survives power loss, costs disk latency).
    """

    def __init__(self, path: str | Path, *, typestore: Typestore | None = None,
                 compression: str = "none", flush_period: float = 1.0,
                 fsync: bool = False) -> None:
        if compression not in COMPRESSIONS:
            raise BagError(f"unknown bag compression '{compression}'; use one of {COMPRESSIONS}")
        self.path = Path(path)
        self.typestore = typestore or make_typestore()
        self.flush_period = float(flush_period)
        self.fsync = fsync
        self.bytes_written = 0
        self.counts: dict[str, int] = {}
        self._connections: dict[str, Any] = {}
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        if compression == "zstd":
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        try:
            self._writer.open()
        except Exception as exc:
            raise BagError(f"cannot create bag {self.path}: {exc}") from exc
        storage = self._writer.storage
        # Periodic flushing relies on rosbags' MCAP writer keeping its pending chunk and file open;
        # check once so a rosbags upgrade that changes this fails loudly, not by losing data.
        if not all(hasattr(storage, a) for a in ("close_chunk", "chunk", "bio")):
            self._writer.abort()
            raise BagError("this rosbags version's MCAP writer has no close_chunk(), which "
                           "periodic flushing needs; install the rosbags version of "
                           "requirements/lock.txt (0.11)")
        self._last_flush = time.monotonic()

    def add_topic(self, topic: str, msgtype: str, *, msgdef: str | None = None,
                  rihs01: str | None = None) -> None:
        """Declare a topic before writing to it; ``msgdef``/``rihs01`` for types the typestore
        does not know (the recorder generates them from the rclpy class)."""
        if topic in self._connections:
            return
        if (msgdef is None or rihs01 is None) and msgtype not in self.typestore.fielddefs:
            raise BagError(f"message type '{msgtype}' of topic '{topic}' is unknown to the "
                           f"typestore and no definition was given")
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self.typestore, msgdef=msgdef, rihs01=rihs01)
        self.counts[topic] = 0

    def write(self, topic: str, timestamp_ns: int, data: bytes | memoryview) -> None:
        """Append one serialized message (log time ``timestamp_ns``)."""
        try:
            connection = self._connections[topic]
        except KeyError:
            raise BagError(f"topic '{topic}' was not added to bag {self.path}") from None
        self._writer.write(connection, int(timestamp_ns), data)
        self.counts[topic] += 1
        self.bytes_written += len(data)
        if time.monotonic() - self._last_flush >= self.flush_period:
            self.flush()

    def flush(self) -> None:
        """Close the pending MCAP chunk and push it to the kernel (and the disk with ``fsync``)."""
        storage = self._writer.storage
        if storage is None:
            return
        if storage.chunk.bio.tell():
            storage.close_chunk()
        storage.bio.flush()
        if self.fsync:
            os.fsync(storage.bio.fileno())
        self._last_flush = time.monotonic()

    def close(self, custom_data: Mapping[str, Any] | None = None) -> None:
        """Write the MCAP summary and ``metadata.yaml`` (with ``custom_data``): a complete bag."""
        for key, value in (custom_data or {}).items():
            text = value if isinstance(value, str) else json.dumps(value)
            self._writer.set_custom_data(key, text)
        self._writer.close()

    def abandon(self) -> None:
        """Stop writing without completing the bag (it stays readable up to the last flush)."""
        storage = self._writer.storage
        if storage is None:
            return
        try:
            self.flush()
        except OSError:
            pass
        try:
            storage.bio.close()
        except OSError:
            pass
        self._writer.storage = None
