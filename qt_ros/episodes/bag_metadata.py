"""A rosbag2 bag directory: its ``metadata.yaml``, the episode record in its custom data, its data
files, and finding bags among paths.

rosbags writes ``metadata.yaml`` when a bag is closed, so a bag whose writer was killed has none
(:mod:`qt_ros.episodes.bag_reader` still reads it, ``qt-ros repair`` rebuilds it). The episode
record (id, instruction, outcome, reward, ...) is kept in the metadata's ``custom_data`` under
``qt_ros.`` keys, string values (JSON for the non-string ones), which ``ros2 bag info`` shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from qt_ros.common.files import atomic_write_text

CUSTOM_PREFIX = "qt_ros."
METADATA_FILE = "metadata.yaml"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available
# custom data keys whose values are JSON (the others are plain strings)
_JSON_KEYS = {"reward", "start_time_ns", "end_time_ns", "topics", "message_count",
              "dropped_messages", "labels", "format"}


class BagError(Exception):
    """A bag that cannot be written or read; the text names the bag, the problem and what to do."""


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


def write_metadata(path: str | Path, info: Mapping[str, Any]) -> None:
    """Replace a bag's ``metadata.yaml`` with ``info`` (the ``rosbag2_bagfile_information``),
    atomically (a crash leaves the old or the new file, never a mix)."""
    text = yaml.safe_dump({"rosbag2_bagfile_information": dict(info)}, sort_keys=False,
                          width=4096)
    atomic_write_text(Path(path) / METADATA_FILE, text)


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
    write_metadata(path, info)


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
