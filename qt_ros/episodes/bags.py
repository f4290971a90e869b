"""Episode bags: rosbag2 directories written with ``rosbags`` (MCAP) and read back, even damaged.

Writing takes serialized CDR bytes (what an rclpy ``raw=True`` subscription delivers), so a message
is never deserialized on the robot. The MCAP chunk being filled is closed and flushed at least every
``flush_period`` seconds: a process killed at any moment leaves a file that reads back up to its
last flushed chunk. Such a bag has no ``metadata.yaml`` (rosbags writes it on close) and no MCAP
summary; :class:`BagReader` reads it record by record and says it is incomplete, and
``qt-ros repair`` rewrites it into a complete bag.

Reading works without ROS: complete MCAP bags through the ``mcap`` library's index, sqlite3 bags
through ``rosbags``; messages are decoded by a ``rosbags`` typestore built from the bag's own
message definitions (MCAP schemas, rosbag2 ``message_definitions``), with the built-in ROS 2
types and the package's own (:mod:`qt_ros.episodes.interfaces`) for any the bag lacks.
"""

from __future__ import annotations

import heapq
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from qt_ros.episodes.catalog import EpisodeCatalog, atomic_write_text
from qt_ros.episodes.interfaces import (
    EPISODE_EVENT,
    EVENT_STARTED,
    default_typestore,
    make_typestore,
)

COMPRESSIONS = ("none", "zstd")
CUSTOM_PREFIX = "qt_ros."
METADATA_FILE = "metadata.yaml"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available


class BagError(Exception):
    """A bag that cannot be written or read; the text names the bag, the problem and what to do."""


# --------------------------------------------------------------------------------------------
# Writing


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


# --------------------------------------------------------------------------------------------
# Custom data: the episode metadata kept in metadata.yaml


def encode_custom_data(record: Mapping[str, Any]) -> dict[str, str]:
    """Episode record -> rosbag2 ``custom_data`` (string values, keys prefixed ``qt_ros.``)."""
    out = {}
    for key, value in record.items():
        if value is None:
            continue
        out[CUSTOM_PREFIX + key] = value if isinstance(value, str) else json.dumps(value)
    return out


def decode_custom_data(custom: Mapping[str, str] | None) -> dict[str, Any]:
    """rosbag2 ``custom_data`` -> episode record (only ``qt_ros.`` keys, JSON values decoded)."""
    out: dict[str, Any] = {}
    for key, value in (custom or {}).items():
        if not key.startswith(CUSTOM_PREFIX):
            continue
        name = key[len(CUSTOM_PREFIX):]
        try:
            out[name] = json.loads(value) if name in _JSON_KEYS else value
        except (TypeError, ValueError):
            out[name] = value
    return out


_JSON_KEYS = {"reward", "start_time_ns", "end_time_ns", "topics", "message_count",
              "dropped_messages", "labels", "format"}


def read_metadata(path: str | Path) -> dict[str, Any] | None:
    """The ``rosbag2_bagfile_information`` of a bag, or None when it has no metadata.yaml."""
    meta_path = Path(path) / METADATA_FILE
    if not meta_path.exists():
        return None
    try:
        data = yaml.load(meta_path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
        return dict(data["rosbag2_bagfile_information"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise BagError(f"{meta_path}: unreadable rosbag2 metadata ({exc}); `qt-ros repair "
                       f"{path}` rebuilds it from the data file") from exc


def update_custom_data(path: str | Path, updates: Mapping[str, Any]) -> None:
    """Rewrite a complete bag's ``metadata.yaml`` with ``updates`` merged into custom_data,
    atomically (a crash leaves the old or the new file, never a mix)."""
    info = read_metadata(path)
    if info is None:
        raise BagError(f"{path} has no {METADATA_FILE} (incomplete bag); run "
                       f"`qt-ros repair {path}`")
    custom = dict(info.get("custom_data") or {})
    custom.update(encode_custom_data(updates))
    info["custom_data"] = custom
    text = yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False,
                          width=4096)
    atomic_write_text(Path(path) / METADATA_FILE, text)


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class TopicInfo:
    msgtype: str
    count: int


@dataclass
class BagReader:
    """Read a rosbag2 directory (MCAP or sqlite3), complete or left incomplete by a crash.

    Attributes:
        path: the bag directory.
        storage: "mcap" or "sqlite3".
        complete: False when the bag has no metadata.yaml (writer killed); its messages are then
            read record by record up to the last complete chunk.
        custom_data: the rosbag2 custom data (empty for an incomplete bag).
        topics: topic -> TopicInfo(msgtype, message count).
        problems: what is wrong with the bag, in words (empty for a healthy bag).
    """

    path: Path
    storage: str = ""
    complete: bool = True
    custom_data: dict[str, str] = field(default_factory=dict)
    topics: dict[str, TopicInfo] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    typestore: Typestore | None = None
    _files: list[Path] = field(default_factory=list)
    _reader: Any = None  # rosbags AnyReader (sqlite3 bags)
    _mcap: list[Any] = field(default_factory=list)  # mcap readers (MCAP bags)
    _streams: list[Any] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path) -> BagReader:
        """Open a bag; raises :class:`BagError` naming the bag and the problem."""
        path = Path(path)
        if not path.exists():
            raise BagError(f"{path}: no such bag (file or directory not found)")
        if path.is_file():
            if path.suffix in (".mcap", ".db3"):
                path = path.parent
            else:
                raise BagError(f"{path}: not a rosbag2 bag (give the bag directory)")
        info = read_metadata(path)
        files = storage_files(path, info)
        if not files:
            raise BagError(f"{path}: not a rosbag2 bag (no metadata.yaml and no .mcap or .db3 "
                           f"file in it)")
        storage = "mcap" if files[0].suffix == ".mcap" else "sqlite3"
        bag = cls(path=path, storage=storage, _files=files)
        if info is not None:
            bag._open_complete(info)
        elif storage == "mcap":
            bag._open_incomplete_mcap()
        else:
            raise BagError(f"{path}: sqlite3 bag without {METADATA_FILE}; run `qt-ros repair "
                           f"{path}` to rebuild it")
        return bag

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for stream in self._streams:
            stream.close()
        self._streams, self._mcap = [], []

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics.values())

    @property
    def episode(self) -> dict[str, Any]:
        """The qt_ros episode record kept in the custom data (empty for other bags)."""
        return decode_custom_data(self.custom_data)

    def messages(self, topics: Iterable[str] | None = None
                 ) -> Iterator[tuple[str, str, int, bytes]]:
        """Yield ``(topic, msgtype, log_time_ns, cdr_bytes)`` in log-time order (complete bags)
        or file order (incomplete bags, which the recorder writes in time order)."""
        wanted = set(self.topics if topics is None else topics)
        if not wanted:
            return
        if not self.complete:
            for record in mcap_records(self._files[0], problems=None):
                if record[0] == "message" and record[1] in wanted:
                    yield record[1:]
            return
        try:
            if self._mcap:
                yield from self._mcap_messages(wanted)
            else:
                conns = [c for c in self._reader.connections if c.topic in wanted]
                for conn, timestamp, data in self._reader.messages(connections=conns):
                    yield conn.topic, conn.msgtype, timestamp, data
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"{self.path}: cannot read the bag's messages ({type(exc).__name__}: "
                           f"{exc}); it may be truncated or corrupt: `qt-ros repair {self.path}` "
                           f"recovers the readable part") from exc

    def _mcap_messages(self, wanted: set[str]) -> Iterator[tuple[str, str, int, bytes]]:
        # The mcap library reads indexed chunks ~2.5x faster than rosbags' reader.
        def one(reader) -> Iterator[tuple[int, str, str, bytes]]:
            for schema, channel, message in reader.iter_messages(topics=sorted(wanted),
                                                                 log_time_order=True):
                yield message.log_time, channel.topic, schema.name if schema else "", message.data

        streams = [one(r) for r in self._mcap]
        merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=lambda m: m[0])
        for log_time, topic, msgtype, data in merged:
            yield topic, msgtype, log_time, data

    def deserialize(self, data: bytes, msgtype: str) -> Any:
        """CDR bytes -> a rosbags message object (fields as attributes, arrays as numpy)."""
        assert self.typestore is not None
        try:
            return self.typestore.deserialize_cdr(data, msgtype)
        except Exception as exc:
            raise BagError(f"{self.path}: a {msgtype} message could not be decoded ({exc}); the "
                           f"bag is corrupt or its type definition is wrong") from exc

    # -- opening ----------------------------------------------------------------------------

    def _open_complete(self, info: dict[str, Any]) -> None:
        self.custom_data = dict(info.get("custom_data") or {})
        try:
            if self.storage == "mcap" and info.get("compression_mode", "") != "file":
                self._open_mcap_files()
                return
            reader = AnyReader([self.path], default_typestore=default_typestore())
            reader.open()
        except BagError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise BagError(f"{self.path}: cannot open the bag ({type(exc).__name__}: {exc}); if it "
                           f"was cut short (crash, full disk, copy error), `qt-ros repair "
                           f"{self.path}` recovers the readable part") from exc
        self._reader = reader
        self.typestore = reader.typestore
        for topic, topic_info in reader.topics.items():
            self.topics[topic] = TopicInfo(topic_info.msgtype or "", int(topic_info.msgcount))

    def _open_mcap_files(self) -> None:
        from mcap.reader import make_reader

        schemas: dict[str, Any] = {}
        self._mcap = []
        for path in self._files:
            if not path.exists():
                raise BagError(f"{self.path}: data file {path.name} named in {METADATA_FILE} is "
                               f"missing")
            stream = open(path, "rb")  # noqa: SIM115 - closed in close()
            self._streams.append(stream)
            reader = make_reader(stream)
            summary = reader.get_summary()
            if summary is None:
                raise BagError(f"{self.path}: {path.name} has no MCAP summary (cut short?); "
                               f"`qt-ros repair {self.path}` rebuilds it")
            self._mcap.append(reader)
            for schema in summary.schemas.values():
                schemas.setdefault(schema.name, schema)
            counts = summary.statistics.channel_message_counts if summary.statistics else {}
            for cid, channel in summary.channels.items():
                schema = summary.schemas.get(channel.schema_id)
                info = self.topics.setdefault(
                    channel.topic, TopicInfo(schema.name if schema else "", 0))
                info.count += int(counts.get(cid, 0))
        self.typestore = _typestore_for(tuple(schemas.values()))

    def _open_incomplete_mcap(self) -> None:
        self.complete = False
        # The bag's own schemas first (they match its data), then built-in definitions for any
        # type whose schema was lost with the damaged part.
        store = get_typestore(Stores.EMPTY)
        problems: list[str] = []
        for record in mcap_records(self._files[0], problems=problems, registry=store):
            if record[0] == "channel":
                _, topic, msgtype = record
                self.topics.setdefault(topic, TopicInfo(msgtype, 0))
            elif record[0] == "message":
                self.topics[record[1]].count += 1
        _fill_typestore(store)
        self.typestore = store
        self.problems = [f"incomplete bag (no {METADATA_FILE}: the writer did not close it); "
                         f"read {self.message_count} messages up to the last flushed chunk"]
        self.problems += problems

def episode_metadata(bag: BagReader) -> dict[str, Any]:
    """The qt_ros episode record of a bag: custom data, else the catalog beside it, else the
    STARTED event recorded in it (an incomplete bag). Empty for other bags."""
    meta = bag.episode
    if meta.get("episode_id"):
        return meta
    try:
        entry = EpisodeCatalog(bag.path.parent).get(bag.path.name)
    except Exception:  # noqa: BLE001 - a damaged catalog must not stop reading the bag
        entry = None
    if entry:
        return dict(entry)
    events = [t for t, info in bag.topics.items() if info.msgtype == EPISODE_EVENT]
    for _, msgtype, _, data in bag.messages(events):
        event = bag.deserialize(data, msgtype)
        if int(event.event) == EVENT_STARTED:
            return {"episode_id": event.episode_id, "instruction": event.instruction,
                    "outcome": "unknown", "source": "autonomous"}
    return {}


def storage_files(path: Path, info: Mapping[str, Any] | None = None) -> list[Path]:
    """The data files of a bag directory: those named in its metadata, else any .mcap/.db3."""
    if info is not None and info.get("relative_file_paths"):
        return [path / Path(p).name for p in info["relative_file_paths"]]
    files = sorted(path.glob("*.mcap")) or sorted(path.glob("*.db3"))
    return files


def is_bag(path: Path) -> bool:
    """Whether ``path`` looks like a rosbag2 directory."""
    return path.is_dir() and ((path / METADATA_FILE).exists() or any(path.glob("*.mcap"))
                              or any(path.glob("*.db3")))


def find_bags(paths: Iterable[str | Path]) -> list[Path]:
    """Expand arguments into bag directories: a bag itself, or every bag one level below a
    directory (a recorder's record directory). Paths that are neither are returned as they are,
    so the caller reports them."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not is_bag(p):
            children = sorted(c for c in p.iterdir() if is_bag(c))
            out.extend(children if children else [p])
        else:
            out.append(p.parent if p.is_file() and p.suffix in (".mcap", ".db3") else p)
    return out


def mcap_records(path: Path, *, problems: list[str] | None,
                  registry: Typestore | None = None) -> Iterator[tuple]:
    """Read an MCAP file record by record, stopping quietly at the first damaged byte.

    Yields ("schema", name, encoding, text), ("channel", topic, msgtype) and
    ("message", topic, msgtype, log_time, data). Schemas are also registered in ``registry``.
    ``problems`` gets a sentence on where reading stopped.
    """
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader

    schemas: dict[int, Any] = {}
    channels: dict[int, tuple[str, str]] = {}
    count = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        reader = StreamReader(f, skip_magic=False, emit_chunks=False)
        try:
            for rec in reader.records:
                if isinstance(rec, Schema):
                    schemas[rec.id] = rec
                    if registry is not None:
                        _register_schema(registry, rec)
                    yield ("schema", rec.name, rec.encoding,
                           rec.data.decode("utf-8", errors="replace"))
                elif isinstance(rec, Channel):
                    schema = schemas.get(rec.schema_id)
                    msgtype = schema.name if schema is not None else ""
                    channels[rec.id] = (rec.topic, msgtype)
                    yield ("channel", rec.topic, msgtype)
                elif isinstance(rec, Message):
                    topic, msgtype = channels.get(rec.channel_id, ("", ""))
                    if not topic:
                        continue
                    count += 1
                    yield ("message", topic, msgtype, rec.log_time, rec.data)
        except Exception as exc:  # the end of a truncated file, or a damaged chunk
            if problems is not None:
                why = f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''}"
                if f.tell() >= size:
                    problems.append(f"{path.name} ends after {count} messages ({size} bytes) "
                                    f"without its MCAP summary ({why})")
                else:
                    problems.append(f"{path.name} is damaged at byte {f.tell()} of {size} "
                                    f"({why}); the {count} messages before are readable")


_STORES: dict[tuple, Typestore] = {}


def _typestore_for(schemas: tuple) -> Typestore:
    """A typestore for these MCAP schemas, built once per process (building one registers
    every type as a Python class, which costs far more than reading a short bag)."""
    key = tuple(sorted((s.name, s.encoding, bytes(s.data)) for s in schemas))
    store = _STORES.get(key)
    if store is None:
        store = get_typestore(Stores.EMPTY)
        for schema in schemas:
            _register_schema(store, schema)
        _fill_typestore(store)
        if len(_STORES) >= 16:
            _STORES.pop(next(iter(_STORES)))
        _STORES[key] = store
    return store


def _fill_typestore(store: Typestore) -> None:
    """Add the built-in definitions of every type the bag's own schemas did not define."""
    default = default_typestore()
    store.register({k: v for k, v in default.fielddefs.items() if k not in store.fielddefs})


def _register_schema(store: Typestore, schema: Any) -> None:
    text = schema.data.decode("utf-8", errors="replace")
    try:
        if schema.encoding == "ros2msg":
            store.register(get_types_from_msg(text, schema.name))
        elif schema.encoding == "ros2idl":
            store.register(get_types_from_idl(text))
    except Exception:  # noqa: BLE001 - fall back to the built-in definition, if any
        pass
