"""Writing episode bags: rosbag2 directories with MCAP storage, from serialized CDR messages.

Writing takes serialized CDR bytes (what an rclpy ``raw=True`` subscription delivers), so a message
is never deserialized on the robot. The MCAP file is written by the ``mcap`` library with every
CRC the format has: each chunk's (over its uncompressed records), the data section's and the
summary's, so a byte changed on disk is found by ``qt-ros repair --check`` and ``qt-ros convert``
(:func:`qt_ros.episodes.mcap_scan.check_crcs`) instead of reaching training. Each channel carries
what rosbag2's reader looks for: ``offered_qos_profiles`` (the recorder's subscription QoS, so
``ros2 bag play`` republishes a latched instruction as transient local) and ``topic_type_hash``
(RIHS01); ``metadata.yaml`` is written as rosbag2 (format version 9) writes it, with
``ros_distro`` from ``ROS_DISTRO`` (default "kilted").

The chunk being filled is closed and flushed at least every ``flush_period`` seconds: a process
killed at any moment leaves a file that reads back up to its last flushed chunk. Such a bag has no
``metadata.yaml`` (written on close) and no MCAP summary;
:class:`~qt_ros.episodes.bag_reader.BagReader` reads it record by record and says it is incomplete,
and ``qt-ros repair`` rewrites it into a complete bag.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2.metadata import dump_qos_v9
from rosbags.typesys.store import Typestore

from qt_ros.episodes.bag_metadata import BagError, write_metadata
from qt_ros.episodes.interfaces import make_typestore

COMPRESSIONS = ("none", "zstd")
DEFAULT_ROS_DISTRO = "kilted"
_IDL_PREFIX = "=" * 80 + "\nIDL: "


def qos_profile(*, reliable: bool, latched: bool = False, depth: int = 1) -> Qos:
    """A keep-last QoS profile as rosbag2 records it (deadline, lifespan: unset)."""
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth,
               QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
               zero, zero, QosLiveliness.SYSTEM_DEFAULT, zero, False)


def offered_qos(profile: Any) -> Qos:
    """An rclpy ``QoSProfile`` as the bag records it (read by attribute: no rclpy import here)."""
    def duration(d: Any) -> QosTime:
        ns = int(getattr(d, "nanoseconds", 0))
        return QosTime(ns // 1_000_000_000, ns % 1_000_000_000)

    return Qos(QosHistory[profile.history.name], int(profile.depth),
               QosReliability[profile.reliability.name], QosDurability[profile.durability.name],
               duration(profile.deadline), duration(profile.lifespan),
               QosLiveliness[profile.liveliness.name],
               duration(profile.liveliness_lease_duration),
               bool(profile.avoid_ros_namespace_conventions))


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
        self.file = self.path / f"{self.path.name}.mcap"
        self._channels: dict[str, int] = {}
        self._schemas: dict[str, int] = {}
        self._topics: list[dict[str, Any]] = []
        self._times = [2**63 - 1, 0]  # first and last log time
        try:
            self.path.mkdir(parents=True)
            self._stream = open(self.file, "xb")  # noqa: SIM115 - closed in close()/abandon()
        except OSError as exc:
            raise BagError(f"cannot create bag {self.path}: {exc}") from exc
        self._mcap: McapWriter | None = McapWriter(
            self._stream, compression=CompressionType.ZSTD if compression == "zstd"
            else CompressionType.NONE, enable_crcs=True, enable_data_crcs=True)
        self._mcap.start(profile="ros2", library=f"qt_ros (mcap {version('mcap')})")
        self._last_flush = time.monotonic()

    def add_topic(self, topic: str, msgtype: str, *, msgdef: str | None = None,
                  rihs01: str | None = None, qos: Qos | Sequence[Qos] | None = None) -> None:
        """Declare a topic before writing to it; ``msgdef``/``rihs01`` for types the typestore
        does not know (the recorder generates them from the rclpy class); ``qos``: the profile
        the topic was received with, which ``ros2 bag play`` offers again."""
        if topic in self._channels:
            return
        if msgdef is None or rihs01 is None:
            if msgtype not in self.typestore.fielddefs:
                raise BagError(f"message type '{msgtype}' of topic '{topic}' is unknown to the "
                               f"typestore and no definition was given")
            msgdef, _ = self.typestore.generate_msgdef(msgtype, ros_version=2)
            rihs01 = self.typestore.hash_rihs01(msgtype)
        assert self._mcap is not None
        if msgtype not in self._schemas:
            encoding = "ros2idl" if msgdef.startswith(_IDL_PREFIX) else "ros2msg"
            self._schemas[msgtype] = self._mcap.register_schema(msgtype, encoding,
                                                                msgdef.encode())
        profiles = [qos] if isinstance(qos, Qos) else list(qos or [])
        dumped = dump_qos_v9(profiles)
        self._channels[topic] = self._mcap.register_channel(
            topic, "cdr", self._schemas[msgtype],
            {"offered_qos_profiles": yaml.safe_dump(dumped, sort_keys=False) if dumped else "",
             "topic_type_hash": rihs01})
        self._topics.append({"name": topic, "type": msgtype, "serialization_format": "cdr",
                             "offered_qos_profiles": dumped, "type_description_hash": rihs01})
        self.counts[topic] = 0

    def write(self, topic: str, timestamp_ns: int, data: bytes | memoryview) -> None:
        """Append one serialized message (log time ``timestamp_ns``)."""
        try:
            channel = self._channels[topic]
        except KeyError:
            raise BagError(f"topic '{topic}' was not added to bag {self.path}") from None
        if self._mcap is None:
            raise BagError(f"bag {self.path} is closed")
        t = int(timestamp_ns)
        self._mcap.add_message(channel, log_time=t, data=bytes(data), publish_time=t)
        self._times = [min(self._times[0], t), max(self._times[1], t)]
        self.counts[topic] += 1
        self.bytes_written += len(data)
        if time.monotonic() - self._last_flush >= self.flush_period:
            self.flush()

    def flush(self) -> None:
        """Close the pending MCAP chunk and push it to the kernel (and the disk with ``fsync``)."""
        if self._mcap is None:
            return
        self._mcap.flush()
        if self.fsync:
            os.fsync(self._stream.fileno())
        self._last_flush = time.monotonic()

    def close(self, custom_data: Mapping[str, Any] | None = None) -> None:
        """Write the MCAP summary and ``metadata.yaml`` (with ``custom_data``): a complete bag."""
        if self._mcap is None:
            raise BagError(f"bag {self.path} is closed")
        custom = {k: v if isinstance(v, str) else json.dumps(v)
                  for k, v in (custom_data or {}).items()}
        info = self._metadata(custom)
        self._mcap.add_metadata("rosbag2", {
            "serialized_metadata": yaml.safe_dump(info, sort_keys=False, width=4096),
            "ROS_DISTRO": info["ros_distro"]})
        self._mcap.finish()
        self._mcap = None
        if self.fsync:
            os.fsync(self._stream.fileno())
        self._stream.close()
        write_metadata(self.path, info)

    def _metadata(self, custom: dict[str, str]) -> dict[str, Any]:
        count = sum(self.counts.values())
        start = self._times[0] if count else 0
        nanoseconds = max(0, self._times[1] - start) if count else 0
        return {
            "version": 9,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": nanoseconds},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": count,
            "topics_with_message_count": [{"topic_metadata": t, "message_count":
                                           self.counts[t["name"]]} for t in self._topics],
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [self.file.name],
            "files": [{"path": self.file.name,
                       "starting_time": {"nanoseconds_since_epoch": start},
                       "duration": {"nanoseconds": nanoseconds}, "message_count": count}],
            "custom_data": custom,
            "ros_distro": os.environ.get("ROS_DISTRO") or DEFAULT_ROS_DISTRO,
        }

    def abandon(self) -> None:
        """Stop writing without completing the bag (it stays readable up to the last flush)."""
        if self._mcap is None:
            return
        try:
            self.flush()
        except OSError:
            pass
        self._mcap = None
        try:
            self._stream.close()
        except OSError:
            pass
