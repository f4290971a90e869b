"""Disk space held back for closing an episode when the disk fills up.

A full disk fails every write, including the few that end an episode cleanly: the bag's MCAP
summary and ``metadata.yaml``, and the atomic rewrite of ``catalog.json`` (a full temporary copy).
The recorder node keeps a small file of allocated blocks in its record directory and deletes it
when a write fails, so those last writes have room even if the disk filled while
``min_free_space_mb`` was 0 (or something else filled it faster than the guard polls). The
reserve is taken back before the next episode starts; while the disk is still full it cannot be,
and that start is refused.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

RESERVE_FILE = ".qt_ros_reserve"
NODE_RESERVE_MB = 4.0  # recorder_node's reserve (plus twice the catalog's size)


class DiskReserve:
    """``<directory>/.qt_ros_reserve``: ``size_mb`` MB plus twice the catalog's size (its
    atomic rewrite needs a full copy), allocated, not sparse. ``size_mb`` 0 keeps no reserve."""

    def __init__(self, directory: str | Path, size_mb: float, catalog: Path | None = None):
        self.path = Path(directory) / RESERVE_FILE
        self.size_mb = float(size_mb)
        self.catalog = catalog

    def wanted_bytes(self) -> int:
        if self.size_mb <= 0:
            return 0
        catalog = 0
        with contextlib.suppress(OSError):
            catalog = self.catalog.stat().st_size if self.catalog else 0
        return int(self.size_mb * 1e6) + 2 * catalog

    def ensure(self) -> bool:
        """Allocate the reserve (again); False if the disk has no room for it."""
        wanted = self.wanted_bytes()
        if wanted == 0:
            return True
        try:
            if self.path.exists() and self.path.stat().st_size >= wanted:
                return True
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(fd, 0, wanted)
            finally:
                os.close(fd)
        except OSError:
            return False
        return True

    def release(self) -> bool:
        """Give the reserve back to the disk; whether there was one."""
        try:
            self.path.unlink()
        except OSError:
            return False
        return True
