"""Episode recording without ROS: one MCAP bag per episode, a catalog, labels, disk safety.

:class:`EpisodeRecorder` is what ``recorder_node`` drives: the node hands it serialized messages
(``write``) and service requests (``start``, ``end``, ``label``); everything else happens here, so
it is tested without ROS. Messages go through a queue to a writer thread
(:mod:`qt_ros.episodes.episode_writer`), so a subscription callback never waits on the disk. The
writer thread flushes the bag every ``flush_period`` and checks the free disk space; below
``min_free_space_mb`` it stops writing and ``poll`` tells the node to end the episode (outcome
``aborted``) with an error event, long before the disk is full.

The recorder writes its own episode events (started, ended) into the bag, on ``events_topic``,
serialized with ``rosbags`` exactly as rclpy would; labels given later go to the bag's
``metadata.yaml`` and the catalog, both replaced atomically.

When the disk fills anyway (``min_free_space_mb: 0``), a write failure gives up the node's
:class:`~qt_ros.episodes.disk_reserve.DiskReserve` so the episode can still be closed and
catalogued; a catalog update that cannot be written is deferred and retried (``retry_catalog``),
and no episode starts until it is written and the reserve is back. A start that fails removes
what it created. A repeated start (``repeated_start``: the same client-chosen id, or the same
instruction within ``START_REPEAT_WINDOW`` seconds) is the running episode, so a client whose
response was lost can ask again.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qt_ros.episodes.bag_metadata import BagError, encode_custom_data, update_custom_data
from qt_ros.episodes.bag_writer import BagWriter, qos_profile
from qt_ros.episodes.catalog import (
    OUTCOMES,
    CatalogError,
    EpisodeCatalog,
    iso_time,
    reward_for,
)
from qt_ros.episodes.disk_reserve import DiskReserve
from qt_ros.episodes.episode_writer import RunningEpisode
from qt_ros.episodes.interfaces import (
    EPISODE_EVENT,
    EVENT_ENDED,
    EVENT_STARTED,
    make_typestore,
)
from qt_ros.episodes.recorder_config import RecorderConfig

log = logging.getLogger(__name__)

EPISODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
BAG_FORMAT = 1
START_REPEAT_WINDOW = 10.0  # s: an id-less start repeating the running one's instruction
CATALOG_RETRY_PERIOD = 1.0  # s between attempts to write deferred catalog updates


class RecorderError(Exception):
    """A request the recorder refuses (the text says why and what to do)."""


@dataclass
class _Topic:
    topic: str
    msgtype: str
    role: str
    msgdef: str | None
    rihs01: str | None
    latched: bool
    qos: Any = None  # the subscription's profile (rosbags Qos), which the bag records


class EpisodeRecorder:
    """Records episodes into ``config.record_dir``: ``<episode_id>/`` bags and ``catalog.json``."""

    def __init__(self, config: RecorderConfig,
                 free_space_mb: Callable[[], float] | None = None, reserve_mb: float = 0.0
                 ) -> None:
        if config.compression not in ("none", "zstd"):
            raise RecorderError(f"compression must be 'none' or 'zstd', got '{config.compression}'")
        if config.source not in ("autonomous", "demonstration"):
            raise RecorderError(f"source must be 'autonomous' or 'demonstration', got "
                                f"'{config.source}'")
        if config.timeout_outcome not in OUTCOMES:
            raise RecorderError(f"timeout_outcome must be one of {OUTCOMES}, "
                                f"got '{config.timeout_outcome}'")
        self.config = config
        self.record_dir = Path(config.record_dir).expanduser()
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = EpisodeCatalog(self.record_dir)
        self.typestore = make_typestore()
        self._free_space_mb = free_space_mb or self._disk_free_mb
        self._topics: dict[str, _Topic] = {}
        self._latched: dict[str, bytes] = {}
        self._active: RunningEpisode | None = None
        self._lock = threading.Lock()
        self._next_catalog_retry = 0.0
        self.reserve = DiskReserve(self.record_dir, reserve_mb, self.catalog.path)
        self.reserve.ensure()
        self.add_topic(config.events_topic, EPISODE_EVENT, role="episode_events",
                       qos=qos_profile(reliable=True, latched=True, depth=10))

    # -- set-up -------------------------------------------------------------------------------

    def add_topic(self, topic: str, msgtype: str, *, role: str = "", msgdef: str | None = None,
                  rihs01: str | None = None, latched: bool = False, qos: Any = None) -> None:
        """Declare a recorded topic. ``latched`` topics (e.g. a transient-local instruction) keep
        their last message, which is written at the start of every episode. ``qos`` (a rosbags
        ``Qos``, see ``bag_writer.offered_qos``) goes into the bag for ``ros2 bag play``; a latched
        topic without one is recorded as reliable + transient local."""
        if qos is None and latched:
            qos = qos_profile(reliable=True, latched=True)
        self._topics[topic] = _Topic(topic, msgtype, role, msgdef, rihs01, latched, qos)

    def recover(self) -> list[str]:
        """Mark episodes a previous recorder left ``recording`` as ``incomplete``."""
        return self.catalog.mark_interrupted()

    def latched(self, topic: str) -> bytes | None:
        """The last message of a latched topic, if any arrived."""
        return self._latched.get(topic)

    @property
    def active_id(self) -> str | None:
        active = self._active
        return active.record["episode_id"] if active else None

    @property
    def written(self) -> int:
        """Messages written into the running episode's bag so far (0 if none is running)."""
        active = self._active
        return sum(active.bag.counts.values()) if active else 0

    @property
    def active_record(self) -> dict[str, Any] | None:
        active = self._active
        return dict(active.record) if active else None

    # -- episodes -----------------------------------------------------------------------------

    def start(self, instruction: str = "", episode_id: str = "", now_ns: int | None = None,
              checkpoint: str = "") -> dict[str, Any]:
        """Open a new episode bag; returns its catalog record. Raises :class:`RecorderError`."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        if self._active is not None:
            raise RecorderError(f"episode '{self.active_id}' is still recording; end it with "
                                f"end_episode first")
        self._check_disk()
        episode_id = episode_id or self._new_id(now_ns)
        if not EPISODE_ID_RE.match(episode_id):
            raise RecorderError(f"invalid episode id '{episode_id}': use letters, digits, '.', "
                                f"'_' and '-' (it names the bag directory)")
        bag_path = self.record_dir / episode_id
        if bag_path.exists() or self.catalog.get(episode_id) is not None:
            raise RecorderError(f"episode id '{episode_id}' is already used in {self.record_dir}")
        bag = None
        try:
            bag = BagWriter(bag_path, typestore=self.typestore,
                            compression=self.config.compression,
                            flush_period=self.config.flush_period, fsync=self.config.fsync)
            for t in self._topics.values():
                bag.add_topic(t.topic, t.msgtype, msgdef=t.msgdef, rihs01=t.rihs01, qos=t.qos)
        except (BagError, OSError) as exc:
            self._remove_bag(bag, bag_path)
            raise RecorderError(f"cannot create the episode bag: {exc}") from exc
        record = {
            "episode_id": episode_id,
            "bag": episode_id,
            "status": "recording",
            "instruction": instruction,
            "outcome": "unknown",
            "reward": 0.0,
            "source": self.config.source,
            "robot": self.config.robot,
            "checkpoint": checkpoint or self.config.checkpoint_id,
            "start_time": iso_time(now_ns),
            "start_time_ns": now_ns,
            "topics": {t.role: t.topic for t in self._topics.values() if t.role},
            "format": BAG_FORMAT,
        }
        try:
            self.catalog.update(episode_id, **record)
        except CatalogError as exc:
            self._remove_bag(bag, bag_path)
            raise RecorderError(f"not starting: {exc}") from exc
        active = RunningEpisode(record, bag, self.config, self._free_space_mb)
        with self._lock:
            self._active = active
            latched = list(self._latched.items())
        for topic, data in latched:
            active.enqueue(topic, now_ns, data)
        active.enqueue(self.config.events_topic, now_ns,
                      self.event_bytes(EVENT_STARTED, record, now_ns, "started"))
        return dict(record)

    def repeated_start(self, instruction: str = "", episode_id: str = "",
                       now_ns: int | None = None) -> dict[str, Any] | None:
        """The running episode's record if a start request repeats the one that started it (a
        client retrying after a lost response): the same ``episode_id``, or no id and the same
        instruction within ``START_REPEAT_WINDOW`` s of its start. Else None."""
        record = self.active_record
        if record is None:
            return None
        if episode_id:
            return record if episode_id == record["episode_id"] else None
        now_ns = time.time_ns() if now_ns is None else now_ns
        recent = now_ns - record["start_time_ns"] <= START_REPEAT_WINDOW * 1e9
        return record if recent and instruction == record["instruction"] else None

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> bool:
        """Queue one serialized message for the running episode; False if it was not recorded
        (no episode running, or the queue is over ``max_queue_mb``: counted as dropped)."""
        spec = self._topics.get(topic)
        if spec is not None and spec.latched:
            self._latched[topic] = data
        active = self._active
        if active is None:
            return False
        return active.enqueue(topic, timestamp_ns, data)

    def note_checkpoint(self, checkpoint: str) -> None:
        """Remember the policy checkpoint seen in the data if none was configured."""
        active = self._active
        if active is not None and checkpoint and not active.record.get("checkpoint"):
            active.record["checkpoint"] = checkpoint

    def poll(self, now_ns: int | None = None) -> tuple[str, str] | None:
        """Whether the running episode must end now: ``(outcome, reason)`` or None.

        Called periodically by the node: reports a disk-space or write failure (``aborted``) and
        the ``max_episode_duration`` timeout (``timeout_outcome``)."""
        active = self._active
        if active is None:
            return None
        if active.failure:
            return "aborted", active.failure
        limit = self.config.max_episode_duration
        now_ns = time.time_ns() if now_ns is None else now_ns
        if limit > 0 and now_ns - active.record["start_time_ns"] >= limit * 1e9:
            return self.config.timeout_outcome, f"timeout after {limit:g} s"
        return None

    def end(self, episode_id: str = "", outcome: str = "unknown", reward: float = -1.0,
            reason: str = "", now_ns: int | None = None) -> tuple[dict[str, Any], str]:
        """End the running episode (or re-label one that already ended).

        Returns ``(record, message)``. An ``episode_id`` naming an episode that already ended (e.g.
        by the policy's terminate flag just before the policy's own end call) is not an error: a
        success/failure/aborted outcome is then applied as a label.
        """
        now_ns = time.time_ns() if now_ns is None else now_ns
        outcome = outcome or "unknown"
        if outcome not in OUTCOMES:
            raise RecorderError(f"unknown outcome '{outcome}'; use one of {', '.join(OUTCOMES)}")
        active = self._active
        if active is None or (episode_id and episode_id != active.record["episode_id"]):
            return self._end_ended(episode_id, outcome, reward, now_ns)
        with self._lock:
            self._active = None
        record = active.record
        reward = reward_for(outcome, reward)
        reason = active.failure or reason or "end_episode"
        record.update(outcome=outcome, reward=reward, end_time=iso_time(now_ns),
                      end_time_ns=now_ns, end_reason=reason)
        if outcome != "unknown":
            record["labels"] = [{"outcome": outcome, "reward": reward, "time": iso_time(now_ns)}]
        active.enqueue(self.config.events_topic, now_ns,
                       self.event_bytes(EVENT_ENDED, record, now_ns, reason), force=True)
        active.stop()
        if active.failure and self.reserve.release():  # room to close the bag and catalog it
            log.warning("gave up the disk reserve %s to close %s", self.reserve.path,
                        record["episode_id"])
        record.update(message_count=sum(active.bag.counts.values()),
                      dropped_messages=active.dropped)
        try:
            active.bag.close(encode_custom_data({**record, "status": "complete"}))
            record["status"] = "complete"
        except Exception as exc:  # noqa: BLE001 - a bag that cannot be closed stays readable
            log.error("could not close bag %s: %s", active.bag.path, exc)
            active.bag.abandon()
            record["status"] = "incomplete"
            record["error"] = f"could not close the bag: {exc}"
        deferred = self.catalog.update_or_defer(record["episode_id"], **record)
        if deferred:
            record["error"] = (f"{deferred}; the update is kept and written as soon as there "
                               f"is room (retried every {CATALOG_RETRY_PERIOD:g} s)")
        message = f"episode {record['episode_id']} ended ({reason}), outcome {outcome}"
        return dict(record), message

    def label(self, episode_id: str, outcome: str, reward: float = -1.0,
              now_ns: int | None = None) -> dict[str, Any]:
        """Label (or relabel) an ended episode: bag metadata and catalog, both atomic."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        if outcome not in OUTCOMES:
            raise RecorderError(f"unknown outcome '{outcome}'; use one of {', '.join(OUTCOMES)}")
        if not episode_id:
            raise RecorderError("label_episode needs an episode_id")
        if self.active_id == episode_id:
            raise RecorderError(f"episode '{episode_id}' is still recording; end it with "
                                f"end_episode (giving the outcome) instead")
        problem = self.catalog.write_deferred()
        if problem:
            raise RecorderError(f"cannot label {episode_id} now: {problem}")
        try:
            record = self.catalog.get(episode_id)
        except CatalogError as exc:
            raise RecorderError(str(exc)) from exc
        if record is None:
            raise RecorderError(f"unknown episode '{episode_id}' (not in "
                                f"{self.catalog.path})")
        reward = reward_for(outcome, reward)
        bag_path = self.record_dir / record.get("bag", episode_id)
        labels = [*record.get("labels", []),
                  {"outcome": outcome, "reward": reward, "time": iso_time(now_ns)}]
        if (bag_path / "metadata.yaml").exists():
            try:
                update_custom_data(bag_path, {"outcome": outcome, "reward": reward,
                                              "labels": labels})
            except (BagError, OSError) as exc:
                raise RecorderError(f"could not label {bag_path}: {exc}") from exc
        try:
            return self.catalog.add_label(episode_id, outcome, reward, now_ns)
        except CatalogError as exc:
            raise RecorderError(str(exc)) from exc

    def shutdown(self, now_ns: int | None = None) -> dict[str, Any] | None:
        """End the running episode, if any, as ``aborted`` (recorder shutting down)."""
        if self._active is None:
            self.catalog.write_deferred()
            return None
        record, _ = self.end(outcome="aborted", reason="recorder shutdown", now_ns=now_ns)
        return record

    def retry_catalog(self) -> str:
        """Write deferred catalog updates (at most every ``CATALOG_RETRY_PERIOD``) and take the
        disk reserve back; returns a message when the catalog has just caught up, else ''."""
        if not self.catalog.deferred or time.monotonic() < self._next_catalog_retry:
            return ""
        self._next_catalog_retry = time.monotonic() + CATALOG_RETRY_PERIOD
        ids = self.catalog.deferred
        if self.catalog.write_deferred():
            return ""
        self.reserve.ensure()
        return f"the episode catalog is up to date again ({', '.join(ids)})"

    # -- events -------------------------------------------------------------------------------

    def event_bytes(self, kind: int, record: dict[str, Any], now_ns: int, message: str) -> bytes:
        """An ``EpisodeEvent`` serialized as CDR (what the node publishes, for the bag)."""
        types = self.typestore.types
        time_cls = types["builtin_interfaces/msg/Time"]
        stamp = time_cls(sec=int(now_ns // 1_000_000_000), nanosec=int(now_ns % 1_000_000_000))
        fields = event_fields(kind, record, message, str(self.record_dir))
        msg = types[EPISODE_EVENT](
            header=types["std_msgs/msg/Header"](stamp=stamp, frame_id=""), stamp=stamp, **fields)
        return bytes(self.typestore.serialize_cdr(msg, EPISODE_EVENT))

    # -- internals ----------------------------------------------------------------------------

    def _check_disk(self) -> None:
        """Refuse to start while catalog updates wait for room, below min_free_space_mb, or
        without the disk reserve (the disk is full)."""
        problem = self.catalog.write_deferred()
        if problem:
            raise RecorderError(f"not starting: {problem}")
        free = self._free_space_mb()
        if free < self.config.min_free_space_mb:
            raise RecorderError(f"not starting: {free:.0f} MB free in {self.record_dir}, below "
                                f"min_free_space_mb={self.config.min_free_space_mb:g}; free disk "
                                f"space or move record_dir")
        if not self.reserve.ensure():
            raise RecorderError(f"not starting: the disk of {self.record_dir} is full (no room "
                                f"for the {self.reserve.wanted_bytes() / 1e6:.1f} MB kept to "
                                f"close an episode); free disk space")

    def _remove_bag(self, bag: BagWriter | None, bag_path: Path) -> None:
        """Undo a start that failed: the bag directory it created goes (it holds nothing)."""
        if bag is not None:
            bag.abandon()
        shutil.rmtree(bag_path, ignore_errors=True)

    def _end_ended(self, episode_id: str, outcome: str, reward: float,
                   now_ns: int) -> tuple[dict[str, Any], str]:
        if not episode_id:
            raise RecorderError("no episode is recording")
        record = self.catalog.get(episode_id)
        if record is None:
            raise RecorderError(f"unknown episode '{episode_id}'; the running episode is "
                                f"'{self.active_id or 'none'}'")
        if outcome == "unknown":
            return record, f"episode {episode_id} had already ended ({record.get('end_reason')})"
        record = self.label(episode_id, outcome, reward, now_ns)
        return record, (f"episode {episode_id} had already ended ({record.get('end_reason')}); "
                        f"labelled {outcome}")

    def _disk_free_mb(self) -> float:
        return shutil.disk_usage(self.record_dir).free / 1e6

    def _new_id(self, now_ns: int) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now_ns / 1e9))
        robot = re.sub(r"[^A-Za-z0-9._-]", "_", self.config.robot)
        return f"{robot + '-' if robot else ''}{stamp}-{secrets.token_hex(3)}"


def event_fields(kind: int, record: dict[str, Any], message: str,
                 record_dir: str) -> dict[str, Any]:
    """The EpisodeEvent fields (besides header and stamp) for an episode record."""
    return {
        "episode_id": record.get("episode_id", ""),
        "event": kind,
        "outcome": record.get("outcome", "unknown"),
        "reward": float(record.get("reward", 0.0)),
        "instruction": record.get("instruction", ""),
        "bag_path": str(Path(record_dir) / record.get("bag", "")) if record.get("bag") else "",
        "message": message,
    }
