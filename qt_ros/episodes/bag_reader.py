"""Reading episode bags without ROS, even damaged ones.

Complete MCAP bags are read through the ``mcap`` library's index, sqlite3 bags through
``rosbags``; a bag left incomplete by a crash (no ``metadata.yaml``, no MCAP summary) is read record
by record up to its last flushed chunk (:mod:`qt_ros.episodes.mcap_scan`). Messages are decoded
by a typestore built from the bag's own message definitions (:mod:`qt_ros.episodes.bag_typestore`),
which accepts the trailing alignment padding some serializers leave. ``verify`` checks an MCAP bag
against its CRCs (chunk CRCs are also checked as chunks are read).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from qt_ros.episodes.bag_metadata import (
    METADATA_FILE,
    BagError,
    decode_custom_data,
    read_metadata,
    storage_files,
)
from qt_ros.episodes.bag_typestore import deserialize_cdr, fill_typestore, typestore_for_schemas
from qt_ros.episodes.catalog import EpisodeCatalog
from qt_ros.episodes.interfaces import EPISODE_EVENT, EVENT_STARTED, default_typestore
from qt_ros.episodes.mcap_scan import ChannelRecord, MessageRecord, check_crcs, mcap_records


@dataclass
class TopicInfo:
    """A topic of a bag: its message type and how many messages it holds."""

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
        damage: the damaged parts its CRCs found (an incomplete bag: found on opening; a complete
            one: after ``verify``); its messages must not be trusted.
        typestore: decodes the bag's messages (see ``deserialize``).
        data_files: the bag's data files (.mcap or .db3), in order.
    """

    path: Path
    storage: str = ""
    complete: bool = True
    custom_data: dict[str, str] = field(default_factory=dict)
    topics: dict[str, TopicInfo] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)
    typestore: Typestore | None = None
    data_files: list[Path] = field(default_factory=list)
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
        bag = cls(path=path, storage=storage, data_files=files)
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
        """Close the bag's data files (also done on leaving a ``with`` block)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for stream in self._streams:
            stream.close()
        self._streams, self._mcap = [], []

    @property
    def message_count(self) -> int:
        """Messages on every topic."""
        return sum(t.count for t in self.topics.values())

    @property
    def episode(self) -> dict[str, Any]:
        """The qt_ros episode record kept in the custom data (empty for other bags)."""
        return decode_custom_data(self.custom_data)

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[MessageRecord]:
        """Yield ``MessageRecord(topic, msgtype, log_time, data)`` (log time in ns, CDR bytes) in
        log-time order (complete bags) or file order (incomplete bags, which the recorder writes
        in time order)."""
        wanted = set(self.topics if topics is None else topics)
        if not wanted:
            return
        if not self.complete:
            for record in mcap_records(self.data_files[0], problems=None):
                if isinstance(record, MessageRecord) and record.topic in wanted:
                    yield record
            return
        try:
            if self._mcap:
                yield from self._mcap_messages(wanted)
            else:
                conns = [c for c in self._reader.connections if c.topic in wanted]
                for conn, timestamp, data in self._reader.messages(connections=conns):
                    yield MessageRecord(conn.topic, conn.msgtype, timestamp, data)
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"{self.path}: cannot read the bag's messages ({type(exc).__name__}: "
                           f"{exc}); it may be truncated or corrupt: `qt-ros repair {self.path}` "
                           f"recovers the readable part") from exc

    def _mcap_messages(self, wanted: set[str]) -> Iterator[MessageRecord]:
        # The mcap library reads indexed chunks ~2.5x faster than rosbags' reader.
        def one(reader) -> Iterator[tuple[int, str, str, bytes]]:
            for schema, channel, message in reader.iter_messages(topics=sorted(wanted),
                                                                 log_time_order=True):
                yield message.log_time, channel.topic, schema.name if schema else "", message.data

        streams = [one(r) for r in self._mcap]
        merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=lambda m: m[0])
        for log_time, topic, msgtype, data in merged:
            yield MessageRecord(topic, msgtype, log_time, data)

    def fingerprint(self) -> str:
        """Identity of a bag without episode metadata: its data files' names, sizes, first MiB."""
        h = hashlib.sha1()
        for f in self.data_files:
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
        return h.hexdigest()[:20]

    def verify(self) -> list[str]:
        """Check the bag's MCAP files against their CRCs (reads them once); returns (and keeps
        in ``damage``) what is damaged, in words. Empty: intact, or nothing to check (sqlite3,
        or a writer that left the CRCs out)."""
        if self.storage == "mcap" and self.complete:
            self.damage = [d for f in self.data_files for d in check_crcs(f)]
            if not self.damage and self._mcap:  # checked: no need to check again while reading
                from mcap.reader import make_reader

                self._mcap = [make_reader(s) for s in self._streams]
        return self.damage

    def deserialize(self, data: bytes, msgtype: str) -> Any:
        """CDR bytes -> a rosbags message object (fields as attributes, arrays as numpy)."""
        assert self.typestore is not None
        try:
            return deserialize_cdr(self.typestore, data, msgtype)
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
        for path in self.data_files:
            if not path.exists():
                raise BagError(f"{self.path}: data file {path.name} named in {METADATA_FILE} is "
                               f"missing")
            stream = open(path, "rb")  # noqa: SIM115 - closed in close()
            self._streams.append(stream)
            reader = make_reader(stream, validate_crcs=True)
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
        self.typestore = typestore_for_schemas(schemas.values())

    def _open_incomplete_mcap(self) -> None:
        self.complete = False
        # The bag's own schemas first (they match its data), then built-in definitions for any
        # type whose schema was lost with the damaged part.
        store = get_typestore(Stores.EMPTY)
        problems: list[str] = []
        for record in mcap_records(self.data_files[0], problems=problems, registry=store,
                                   damage=self.damage):
            if isinstance(record, ChannelRecord):
                self.topics.setdefault(record.topic, TopicInfo(record.msgtype, 0))
            elif isinstance(record, MessageRecord):
                self.topics[record.topic].count += 1
        fill_typestore(store)
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
    for message in bag.messages(events):
        event = bag.deserialize(message.data, message.msgtype)
        if int(event.event) == EVENT_STARTED:
            return {"episode_id": event.episode_id, "instruction": event.instruction,
                    "outcome": "unknown", "source": "autonomous"}
    return {}
