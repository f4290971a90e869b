"""The recorder core on a full disk, and a start request that is repeated.

A full disk is simulated two ways: an ``OSError(ENOSPC)`` injected into the bag writer and the
catalog writes (runs everywhere), and a real tmpfs filled to the last byte, mounted in a private
user and mount namespace (``unshare -rm``; skipped where that is not allowed).
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from qt_ros.episodes import catalog as catalog_module
from qt_ros.episodes.bag_reader import BagReader
from qt_ros.episodes.bag_writer import BagWriter
from qt_ros.episodes.disk_reserve import DiskReserve
from qt_ros.episodes.recorder import (
    CATALOG_RETRY_PERIOD,
    START_REPEAT_WINDOW,
    EpisodeRecorder,
    RecorderError,
)
from qt_ros.episodes.recorder_config import RecorderConfig

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _recorder(record_dir: Path, **kwargs) -> EpisodeRecorder:
    rec = EpisodeRecorder(RecorderConfig(record_dir=record_dir, min_free_space_mb=0,
                                         flush_period=0.05), free_space_mb=lambda: 1e9, **kwargs)
    rec.add_topic("/image", "sensor_msgs/msg/Image", role="image")
    return rec


def _image(rec: EpisodeRecorder, k: int, side: int = 8) -> bytes:
    types = rec.typestore.types
    msg = types["sensor_msgs/msg/Image"](
        header=types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=k, nanosec=0), frame_id="cam"),
        height=side, width=side, encoding="rgb8", is_bigendian=0, step=3 * side,
        data=np.random.default_rng(k).integers(0, 256, 3 * side * side, np.uint8))
    return rec.typestore.serialize_cdr(msg, "sensor_msgs/msg/Image").tobytes()


def _on_disk(record_dir: Path) -> dict[str, str]:
    """Each catalogued episode's status as catalog.json says it, and what its bag shows."""
    catalog = json.loads((record_dir / "catalog.json").read_text())["episodes"]
    closed = {k: (record_dir / k / "metadata.yaml").exists() for k in catalog}
    return {k: f"{r['status']}/{'closed' if closed[k] else 'open'}" for k, r in catalog.items()}


def _directories(record_dir: Path) -> list[str]:
    return sorted(p.name for p in record_dir.iterdir() if p.is_dir())


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk["on"] = True`` fails every write of bags, catalog and reserve with ENOSPC."""
    state = {"on": False}

    def failing(original):
        def wrapper(*args, **kwargs):
            if state["on"]:
                raise ENOSPC
            return original(*args, **kwargs)
        return wrapper

    for name in ("write", "flush", "close"):
        monkeypatch.setattr(BagWriter, name, failing(getattr(BagWriter, name)))
    monkeypatch.setattr(catalog_module, "atomic_write_text",
                        failing(catalog_module.atomic_write_text))
    monkeypatch.setattr(DiskReserve, "ensure", lambda self: not state["on"])
    return state


def test_enospc_mid_episode_catalog_catches_up_and_no_orphan(tmp_path, full_disk):
    record_dir = tmp_path / "episodes"
    rec = _recorder(record_dir)
    rec.start("first", "first", now_ns=1)
    rec.write("/image", 2, _image(rec, 2))
    rec.end(outcome="success", now_ns=3)

    rec.start("fill", "fill", now_ns=4)
    full_disk["on"] = True
    rec.write("/image", 5, _image(rec, 5))
    deadline = time.monotonic() + 5
    while rec.poll(6) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    outcome, reason = rec.poll(6)
    assert outcome == "aborted" and "No space left" in reason
    record, _ = rec.end(outcome=outcome, reason=reason, now_ns=7)
    assert record["status"] == "incomplete"
    assert "written as soon as there is room" in record["error"]
    assert rec.catalog.get("fill")["status"] == "incomplete"  # what the recorder knows

    with pytest.raises(RecorderError, match="not starting: could not write the episode catalog"):
        rec.start("while full", "while-full", now_ns=8)
    assert _directories(record_dir) == ["fill", "first"]  # no orphan
    assert rec.retry_catalog() == ""  # still full

    full_disk["on"] = False  # space is back: the next retry writes the catalog
    time.sleep(CATALOG_RETRY_PERIOD)
    assert "up to date again" in rec.retry_catalog()
    assert _on_disk(record_dir) == {"first": "complete/closed", "fill": "incomplete/open"}
    rec.start("after", "after", now_ns=9)
    rec.end(outcome="success", now_ns=10)
    assert _on_disk(record_dir)["after"] == "complete/closed"
    with BagReader.open(record_dir / "first") as bag:
        assert bag.complete and bag.topics["/image"].count == 1


def test_a_start_that_fails_removes_what_it_created(tmp_path, full_disk, monkeypatch):
    record_dir = tmp_path / "episodes"
    rec = _recorder(record_dir)
    rec.start("first", "first", now_ns=1)
    rec.end(outcome="success", now_ns=2)
    before = (record_dir / "catalog.json").read_bytes()
    monkeypatch.setattr(catalog_module, "atomic_write_text",
                        lambda *a: (_ for _ in ()).throw(ENOSPC))
    with pytest.raises(RecorderError, match="not starting: could not write the episode catalog"):
        rec.start("second", "second", now_ns=3)
    assert _directories(record_dir) == ["first"]
    assert (record_dir / "catalog.json").read_bytes() == before


def test_repeated_start_is_the_running_episode(tmp_path):
    rec = _recorder(tmp_path / "episodes")
    assert rec.repeated_start("x", "a") is None
    rec.start("pick", "a", now_ns=0)
    assert rec.repeated_start("anything", "a")["episode_id"] == "a"  # same client-chosen id
    assert rec.repeated_start("pick", "b") is None  # another id is another episode
    rec.end(now_ns=1)
    assert rec.repeated_start("pick", "a") is None  # ended: nothing to repeat

    started = rec.start("place", now_ns=10)  # the recorder chose the id
    window = int(START_REPEAT_WINDOW * 1e9)
    assert rec.repeated_start("place", now_ns=10 + window)["episode_id"] == started["episode_id"]
    assert rec.repeated_start("place", now_ns=11 + window) is None  # too late to be a retry
    assert rec.repeated_start("pick", now_ns=11) is None  # another instruction
    with pytest.raises(RecorderError, match="still recording"):
        rec.start("pick", now_ns=12)


FILL = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path[:0] = [{test_dir!r}]
    from test_recorder_disk import _directories, _image, _on_disk, _recorder
    from qt_ros.episodes.bag_reader import BagReader
    from qt_ros.episodes.disk_reserve import NODE_RESERVE_MB
    from qt_ros.episodes.recorder import RecorderError
    record_dir = Path(sys.argv[1])
    rec = _recorder(record_dir, reserve_mb=NODE_RESERVE_MB)
    report = {{}}
    rec.start("first", "first", now_ns=1)
    for k in range(3):
        rec.write("/image", 2 + k, _image(rec, k))
    rec.end(outcome="success", now_ns=9)
    (record_dir / "ballast").write_bytes(bytes(3 << 20))
    rec.start("fill", "fill", now_ns=10)
    k = 0
    while rec.poll(11) is None and k < 2000:
        rec.write("/image", 11 + k, _image(rec, k, 200))
        k += 1
        time.sleep(0.002)
    outcome, reason = rec.poll(11)
    record, _ = rec.end(outcome=outcome, reason=reason, now_ns=12)
    report["reason"], report["status"] = reason, record["status"]
    report["on_disk_while_full"] = _on_disk(record_dir)
    try:
        rec.start("while full", "while-full", now_ns=13)
        report["while_full"] = "started"
    except RecorderError as exc:
        report["while_full"] = str(exc)
    report["directories_while_full"] = _directories(record_dir)
    (record_dir / "ballast").unlink()
    rec.start("after", "after", now_ns=14)
    rec.end(outcome="success", now_ns=15)
    report["on_disk_after"] = _on_disk(record_dir)
    with BagReader.open(record_dir / "first") as bag:
        report["first_images"] = bag.topics["/image"].count if bag.complete else -1
    print(json.dumps(report))
""")


def test_a_real_full_disk_closes_the_episode_and_resumes_when_space_is_back(tmp_path):
    """A 16 MB tmpfs filled to the last byte with min_free_space_mb 0: the disk reserve lets
    the episode that filled it close as a complete bag, the catalog says so at once, a start
    while full is refused without leaving anything, and recording resumes once space is back."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("`unshare -rm` (a private tmpfs) is not allowed on this machine")
    record_dir = tmp_path / "tmpfs"
    record_dir.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(FILL.format(test_dir=str(Path(__file__).parent)))
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=16m none {record_dir} && "
                                       f"exec {sys.executable} {script} {record_dir}"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "No space left on device" in report["reason"]
    assert report["status"] == "complete"
    assert report["on_disk_while_full"] == {"first": "complete/closed",
                                            "fill": "complete/closed"}
    assert "the disk of" in report["while_full"] and "is full" in report["while_full"]
    assert report["directories_while_full"] == ["fill", "first"]
    assert report["on_disk_after"]["after"] == "complete/closed"
    assert report["first_images"] == 3
