"""Bag repair: make an incomplete or damaged bag complete again, keeping its data (the library
behind ``qt-ros repair``).

A recorder killed mid-episode (SIGKILL, power loss, full disk) leaves an MCAP file without its
summary and a bag directory without ``metadata.yaml``; bytes changed on disk make a bag fail its
CRCs. ``repair`` reads the file record by record, skipping chunks that fail their CRC and stopping
where the records stop making sense, writes every readable message into a new, complete MCAP file
(:class:`~qt_ros.episodes.bag_writer.BagWriter`: same topics, types, message definitions, QoS
profiles and type hashes, same log times, same chunk compression, fresh CRCs), and writes
``metadata.yaml`` with the episode metadata (from the bag, the catalog beside it, or the episode
events recorded in it). The original file is kept as ``<name>.damaged`` unless ``--no-backup``.
A sqlite3 bag without ``metadata.yaml`` gets its metadata rebuilt from the database (reindex).
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rosbags.rosbag2.metadata import parse_qos
from rosbags.typesys import Stores, get_typestore

from qt_ros.episodes.bag_metadata import (
    METADATA_FILE,
    BagError,
    decode_custom_data,
    encode_custom_data,
    read_metadata,
    storage_files,
    write_metadata,
)
from qt_ros.episodes.bag_reader import BagReader, episode_metadata
from qt_ros.episodes.bag_writer import BagWriter
from qt_ros.episodes.catalog import CatalogError, EpisodeCatalog, iso_time
from qt_ros.episodes.mcap_scan import ChannelRecord, MessageRecord, SchemaRecord, mcap_records


@dataclass
class RepairResult:
    """What ``repair_bag`` found and did with one bag (``messages``: how many it kept)."""

    bag: Path
    state: str  # "ok", "repaired", "reindexed", "needs repair", "failed"
    detail: str
    messages: int = 0


def diagnose(path: Path) -> tuple[str, str]:
    """``("ok" | "incomplete" | "damaged", detail)``; raises BagError if it is not a bag."""
    try:
        info = read_metadata(path)
    except BagError as exc:
        return "damaged", str(exc)
    files = storage_files(path, info)
    if not files:
        raise BagError(f"{path}: not a rosbag2 bag (no metadata.yaml and no .mcap or .db3 file)")
    if info is None:
        return "incomplete", f"no {METADATA_FILE} (the writer did not close the bag)"
    try:
        with BagReader.open(path) as bag:
            if bag.verify():
                return "damaged", "; ".join(bag.damage)
            count = sum(1 for _ in bag.messages())
    except BagError as exc:
        return "damaged", str(exc)
    return "ok", f"complete, {count} messages readable, CRCs match"


def repair_bag(path: str | Path, *, check: bool = False, backup: bool = True) -> RepairResult:
    """Diagnose one bag and, unless ``check``, repair it."""
    path = Path(path)
    try:
        state, detail = diagnose(path)
    except BagError as exc:
        return RepairResult(path, "failed", str(exc))
    if state == "ok":
        return RepairResult(path, "ok", detail)
    if check:
        return RepairResult(path, "needs repair", f"{state}: {detail}")
    try:
        info = read_metadata(path)
    except BagError:
        info = None
    files = storage_files(path, info) or storage_files(path)
    try:
        if files and files[0].suffix == ".db3":
            return _reindex_sqlite(path, files)
        return _rewrite_mcap(path, [f for f in files if f.exists()], info, backup)
    except (BagError, OSError, sqlite3.Error) as exc:
        return RepairResult(path, "failed", f"{state} ({detail}); repair failed: {exc}")


def _mcap_compression(path: Path) -> str:
    """The chunk compression of an MCAP file ("" or "zstd"/"lz4"), from its first chunk."""
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    with open(path, "rb") as f:
        try:
            for rec in StreamReader(f, skip_magic=False, emit_chunks=True).records:
                if isinstance(rec, Chunk):
                    return rec.compression
        except Exception:  # noqa: BLE001 - a damaged file: no chunk readable
            return ""
    return ""


def _rewrite_mcap(path: Path, files: list[Path], info: dict | None,
                  backup: bool) -> RepairResult:
    if not files:
        raise BagError("the bag has no data file left")
    source = files[0]
    work = path.parent / f".{path.name}.repair"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    new_bag = work / path.name
    store = get_typestore(Stores.EMPTY)
    schemas: dict[str, str] = {}
    problems: list[str] = []
    writer = BagWriter(new_bag, typestore=store, flush_period=float("inf"),
                       compression="zstd" if _mcap_compression(source) == "zstd" else "none")
    topics: set[str] = set()
    count = 0
    try:
        for record in mcap_records(source, problems=problems, registry=store):
            if isinstance(record, SchemaRecord):
                schemas[record.name] = record.text
            elif isinstance(record, ChannelRecord):
                topic, msgtype = record.topic, record.msgtype
                if topic in topics or msgtype not in schemas:
                    continue
                writer.add_topic(topic, msgtype, msgdef=schemas[msgtype],
                                 rihs01=record.metadata.get("topic_type_hash")
                                 or _hash(store, msgtype), qos=_qos(record.metadata))
                topics.add(topic)
            elif isinstance(record, MessageRecord):
                if record.topic in topics:
                    writer.write(record.topic, record.log_time, record.data)
                    count += 1
        meta = _episode_meta(path, info)
        meta.update(status="repaired", message_count=count,
                    repaired=f"{iso_time(time.time_ns())} from {source.name}")
        custom = dict((info or {}).get("custom_data") or {})
        custom.update(encode_custom_data(meta) if meta.get("episode_id") else {})
        writer.close(custom)
    except BaseException:
        writer.abandon()
        shutil.rmtree(work, ignore_errors=True)
        raise
    # Swap: keep (or drop) the damaged file, move the new one in, metadata.yaml last.
    for f in files:
        if backup:
            f.rename(_free_name(f.with_name(f.name + ".damaged")))
        else:
            f.unlink()
    if (path / METADATA_FILE).exists():
        (path / METADATA_FILE).unlink()
    new_data = new_bag / f"{path.name}.mcap"
    new_data.rename(path / new_data.name)
    (new_bag / METADATA_FILE).rename(path / METADATA_FILE)
    shutil.rmtree(work, ignore_errors=True)
    _update_catalog(path, count)
    where = "; ".join(problems) if problems else "read to the end of the file"
    kept = f"; original kept as {files[0].name}.damaged" if backup else ""
    return RepairResult(path, "repaired", f"{count} messages recovered ({where}){kept}", count)


def _episode_meta(path: Path, info: dict | None) -> dict:
    """Episode metadata for the repaired bag: its old custom data, the catalog, or its events."""
    if info is not None:
        meta = decode_custom_data(info.get("custom_data"))
        if meta.get("episode_id"):
            return meta
        try:
            return dict(EpisodeCatalog(path.parent).get(path.name) or {})
        except CatalogError:
            return {}
    try:
        with BagReader.open(path) as bag:
            return dict(episode_metadata(bag))
    except BagError:
        return {}


def _qos(metadata) -> list:
    """The QoS profiles recorded in an MCAP channel's metadata (none when unreadable)."""
    try:
        return parse_qos(metadata.get("offered_qos_profiles") or "")
    except Exception:  # noqa: BLE001 - damaged metadata: replay with defaults
        return []


def _hash(store, msgtype: str) -> str:
    try:
        return store.hash_rihs01(msgtype)
    except Exception:  # noqa: BLE001 - a type whose definition was lost: no hash
        return "RIHS01_" + "0" * 64


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{n}")
        n += 1
    return candidate


def _update_catalog(path: Path, count: int) -> None:
    catalog = EpisodeCatalog(path.parent)
    try:
        if catalog.get(path.name) is not None:
            catalog.update(path.name, status="repaired", message_count=count)
    except CatalogError as exc:
        print(f"warning: {exc}", file=sys.stderr)


def _reindex_sqlite(path: Path, files: list[Path]) -> RepairResult:
    """Rebuild metadata.yaml of a sqlite3 bag from its database."""
    topics_meta = []
    total, start, end = 0, None, None
    for f in files:
        db = sqlite3.connect(f"file:{f}?mode=ro", uri=True)
        try:
            columns = [r[1] for r in db.execute("PRAGMA table_info(topics)")]
            has_hash = "type_description_hash" in columns
            rows = db.execute("SELECT id, name, type, serialization_format, offered_qos_profiles"
                              + (", type_description_hash" if has_hash else "")
                              + " FROM topics ORDER BY id").fetchall()
            stats = {tid: (n, lo, hi) for tid, n, lo, hi in db.execute(
                "SELECT topic_id, COUNT(*), MIN(timestamp), MAX(timestamp) FROM messages "
                "GROUP BY topic_id")}
        finally:
            db.close()
        for row in rows:
            n, lo, hi = stats.get(row[0], (0, None, None))
            total += n
            if lo is not None:
                start = lo if start is None else min(start, lo)
                end = hi if end is None else max(end, hi)
            topics_meta.append({"topic_metadata": {
                "name": row[1], "type": row[2], "serialization_format": row[3],
                "offered_qos_profiles": row[4] or "",
                "type_description_hash": row[5] if has_hash else ""}, "message_count": n})
    start = start or 0
    duration = (end or start) - start
    info = {"version": 8, "storage_identifier": "sqlite3",
            "relative_file_paths": [f.name for f in files],
            "duration": {"nanoseconds": duration},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": total, "topics_with_message_count": topics_meta,
            "compression_format": "", "compression_mode": "",
            "files": [{"path": f.name, "starting_time": {"nanoseconds_since_epoch": start},
                       "duration": {"nanoseconds": duration}, "message_count": total}
                      for f in files[:1]],
            "custom_data": {"qt_ros.status": "reindexed"}}
    write_metadata(path, info)
    _update_catalog(path, total)
    return RepairResult(path, "reindexed", f"metadata rebuilt: {total} messages on "
                        f"{len(topics_meta)} topics", total)
