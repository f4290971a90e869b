"""The episode being recorded: its record, its open bag and the thread that writes into it.

Messages go through a queue to a writer thread, so a subscription callback never waits on the disk.
The thread also flushes the bag every ``flush_period`` and checks the free disk space; a write or
flush that fails, or free space below ``min_free_space_mb``, marks the episode failed
(``failure``): from then on only episode events are written, and
:meth:`qt_ros.episodes.recorder.EpisodeRecorder.poll` tells the node to end it (``aborted``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from qt_ros.episodes.bag_writer import BagWriter
from qt_ros.episodes.recorder_config import RecorderConfig

log = logging.getLogger(__name__)
_STOP = object()


class RunningEpisode:
    """One episode's catalog ``record``, its ``bag`` and its writer thread (started here)."""

    def __init__(self, record: dict[str, Any], bag: BagWriter, config: RecorderConfig,
                 free_space_mb: Callable[[], float]) -> None:
        self.record = record
        self.bag = bag
        self.config = config
        self.queued_bytes = 0
        self.dropped = 0
        self.failure = ""
        self._free_space_mb = free_space_mb
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"bag-writer-{record['episode_id']}")
        self._thread.start()

    def enqueue(self, topic: str, timestamp_ns: int, data: bytes, force: bool = False) -> bool:
        """Queue one message; False (counted as dropped) after a failure or past
        ``max_queue_mb`` waiting, unless ``force`` (the recorder's own events)."""
        size = len(data)
        with self._lock:
            if not force and (self.failure or
                              self.queued_bytes + size > self.config.max_queue_mb * 1e6):
                self.dropped += 1
                return False
            self.queued_bytes += size
        self._queue.put((topic, timestamp_ns, data))
        return True

    def stop(self) -> None:
        """Write what is queued, then stop the thread (the bag stays open)."""
        self._queue.put(_STOP)
        self._thread.join()

    def fail(self, reason: str) -> None:
        if not self.failure:
            log.error("%s", reason)
            self.failure = reason

    def _loop(self) -> None:
        period = max(0.05, min(self.config.flush_period, 1.0))
        next_check = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=period)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                topic, timestamp_ns, data = item
                with self._lock:
                    self.queued_bytes -= len(data)
                if self.failure and topic != self.config.events_topic:
                    continue
                try:
                    self.bag.write(topic, timestamp_ns, data)
                except Exception as exc:  # noqa: BLE001 - reported through poll()
                    self.fail(f"writing the bag failed: {exc}")
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + period
                self._check()

    def _check(self) -> None:
        try:
            self.bag.flush()
        except Exception as exc:  # noqa: BLE001
            self.fail(f"flushing the bag failed: {exc}")
            return
        free = self._free_space_mb()
        if free < self.config.min_free_space_mb and not self.failure:
            self.fail(f"disk space low: {free:.0f} MB free in {self.bag.path.parent}, below "
                      f"min_free_space_mb={self.config.min_free_space_mb:g}; recording stopped")
