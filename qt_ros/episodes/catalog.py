"""The episode catalog: one JSON file listing every episode of a record directory.

``<record_dir>/catalog.json`` maps episode ids to their records (bag, instruction, outcome,
reward, robot, checkpoint, times, status, label history). It is only ever replaced atomically
(written to a temporary file, synced, renamed), under a lock, so a crash or a full disk leaves the
previous catalog intact, never a half-written one. The bags stay the source of truth; the catalog
is the index a person or the converter reads first.

An update that cannot be written (a full disk) can be deferred (``update_or_defer``): this
catalog object then reads as if it had been written and writes it with its next successful
write (``write_deferred`` retries), so the file catches up as soon as there is room.

Episode ``status``: ``recording`` (bag open), ``complete`` (bag closed), ``incomplete`` (the
recorder died before closing the bag; ``qt-ros repair`` fixes it), ``repaired``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qt_ros.common.files import atomic_write_text

CATALOG_FILE = "catalog.json"
FORMAT = "qt_ros-episode-catalog"
VERSION = 1
OUTCOMES = ("success", "failure", "aborted", "unknown")


class CatalogError(Exception):
    """The catalog cannot be read or written; the text says which file and what to do."""


# Outcomes and rewards: docs/design.md 4.3.
def reward_for(outcome: str, reward: float | None = None) -> float:
    """The episode's final reward: ``reward`` if given (>= 0), else 1 for success, else 0."""
    if reward is not None and reward >= 0:
        return float(reward)
    return 1.0 if outcome == "success" else 0.0


def iso_time(ns: int) -> str:
    """Nanoseconds since the epoch -> ISO 8601 UTC text (for people reading the catalog)."""
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")


class EpisodeCatalog:
    """Read and update ``<record_dir>/catalog.json``; every update is locked and atomic."""

    def __init__(self, record_dir: str | Path) -> None:
        self.record_dir = Path(record_dir)
        self.path = self.record_dir / CATALOG_FILE
        self._deferred: dict[str, dict[str, Any]] = {}

    @property
    def deferred(self) -> list[str]:
        """Ids of episodes whose latest update is not in the file yet."""
        return list(self._deferred)

    def episodes(self) -> dict[str, dict[str, Any]]:
        """All episode records by id, in recording order (an empty dict if there is no catalog),
        with the updates deferred by this object applied."""
        episodes = self._read()
        for episode_id, fields in self._deferred.items():
            episodes[episode_id] = {**episodes.get(episode_id, {"episode_id": episode_id}),
                                    **fields}
        return episodes

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CatalogError(f"episode catalog {self.path} is unreadable ({exc}); it is never "
                               f"written in place, so this is outside damage: restore it from a "
                               f"backup or move it away (the bags hold the same metadata)") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CatalogError(f"{self.path} is not a qt_ros episode catalog")
        return dict(data.get("episodes", {}))

    def get(self, episode_id: str) -> dict[str, Any] | None:
        return self.episodes().get(episode_id)

    def update(self, episode_id: str, /, **fields: Any) -> dict[str, Any]:
        """Create or update one episode's record; returns the new record."""
        with self._locked():
            episodes = self.episodes()
            record = dict(episodes.get(episode_id, {"episode_id": episode_id}))
            record.update(fields)
            episodes[episode_id] = record
            self._write(episodes)
        return record

    def update_or_defer(self, episode_id: str, /, **fields: Any) -> str:
        """``update``, or, if the file cannot be written, keep the update for a later write;
        returns '' or why it was deferred."""
        try:
            self.update(episode_id, **fields)
        except CatalogError as exc:
            self._deferred[episode_id] = {**self._deferred.get(episode_id, {}), **fields}
            return str(exc)
        return ""

    def write_deferred(self) -> str:
        """Write the deferred updates; returns '' when none are left, else why not."""
        if not self._deferred:
            return ""
        try:
            with self._locked():
                self._write(self.episodes())
        except CatalogError as exc:
            return str(exc)
        return ""

    def add_label(self, episode_id: str, outcome: str, reward: float, time_ns: int, /,
                  **fields: Any) -> dict[str, Any]:
        """Set an episode's outcome and reward, keeping the previous labels in ``labels``."""
        with self._locked():
            episodes = self.episodes()
            if episode_id not in episodes:
                raise CatalogError(f"episode '{episode_id}' is not in {self.path}")
            record = dict(episodes[episode_id])
            labels = list(record.get("labels", []))
            labels.append({"outcome": outcome, "reward": reward, "time": iso_time(time_ns)})
            record.update(outcome=outcome, reward=reward, labels=labels, **fields)
            episodes[episode_id] = record
            self._write(episodes)
        return record

    def mark_interrupted(self, active: set[str] | None = None) -> list[str]:
        """Episodes left ``recording`` by a recorder that died -> ``incomplete``; returns ids."""
        active = active or set()
        with self._locked():
            episodes = self.episodes()
            stale = [k for k, r in episodes.items()
                     if r.get("status") == "recording" and k not in active]
            for k in stale:
                episodes[k] = {**episodes[k], "status": "incomplete",
                               "end_reason": episodes[k].get("end_reason") or "recorder died"}
            if stale:
                self._write(episodes)
        return stale

    def _write(self, episodes: dict[str, dict[str, Any]]) -> None:
        """Replace the file with ``episodes`` (which include the deferred updates)."""
        text = json.dumps({"format": FORMAT, "version": VERSION, "episodes": episodes},
                          indent=1, sort_keys=False)
        try:
            atomic_write_text(self.path, text + "\n")
        except OSError as exc:
            raise CatalogError(f"could not write the episode catalog {self.path} ({exc}); the "
                               f"previous catalog is unchanged") from exc
        self._deferred.clear()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.record_dir / (CATALOG_FILE + ".lock"), "a")  # noqa: SIM115
        except OSError as exc:
            raise CatalogError(f"could not lock the episode catalog {self.path} ({exc})") from exc
        with lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
