"""Files: safe writes shared by the catalog, the bags, bag repair and the dataset, and where the
package's shipped parameter files are.

Every small table qt_ros keeps next to its data (``catalog.json``, a bag's ``metadata.yaml``, the
dataset's JSON files) is replaced, never written in place, so a crash or a full disk leaves the
previous file readable.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: readers see the old or the new file, never a mix.

    On any error (a full disk included) the temporary file is removed and the old file is left
    untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; keep the mode of the file replaced, else rw-r--r--
        os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # persist the rename itself
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


REPO = Path(__file__).resolve().parents[2]


def shipped_config(name: str) -> Path | None:
    """``config/<name>`` of the source tree, else of an installed qt_ros
    (``<prefix>/share/qt_ros/config`` on ``AMENT_PREFIX_PATH``); None when neither has it."""
    candidates = [REPO / "config" / name]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / "qt_ros" / "config" / name)
    return next((c for c in candidates if c.is_file()), None)
