"""Episode bags and the catalog without ROS: writing, reading with three readers, crashes, labels,
disk-space protection, repair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from qt_ros.common import files as files_module
from qt_ros.episodes.bag_metadata import BagError, find_bags
from qt_ros.episodes.bag_reader import BagReader
from qt_ros.episodes.bag_repair import diagnose, repair_bag
from qt_ros.episodes.catalog import CatalogError, EpisodeCatalog
from qt_ros.episodes.interfaces import EPISODE_EVENT, MSG_DEFINITIONS, POLICY_STEP
from qt_ros.episodes.recorder import EpisodeRecorder, RecorderConfig, RecorderError

from conftest import wait_for

REPO = Path(__file__).resolve().parents[2]


def test_embedded_message_definitions_match_msg_files():
    for name, text in MSG_DEFINITIONS.items():
        path = REPO / "msg" / f"{name.rsplit('/', 1)[1]}.msg"
        assert path.read_text() == text, f"qt_ros/episodes/interfaces.py is out of date with {path}"


def _recorder(tmp_path: Path, free=lambda: 1e9, **config) -> EpisodeRecorder:
    rec = EpisodeRecorder(RecorderConfig(record_dir=tmp_path / "episodes", robot="arm1",
                                         **config), free_space_mb=free)
    rec.add_topic("/instruction", "std_msgs/msg/String", role="instruction", latched=True)
    rec.add_topic("/image", "sensor_msgs/msg/Image", role="image")
    rec.add_topic("/policy_step", POLICY_STEP, role="policy_step")
    return rec


def _image(rec: EpisodeRecorder, k: int) -> bytes:
    t = rec.typestore.types
    msg = t["sensor_msgs/msg/Image"](
        header=t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=k, nanosec=7),
                                        frame_id="cam"),
        height=4, width=5, encoding="rgb8", is_bigendian=0, step=15,
        data=np.full(60, k, dtype=np.uint8))
    return rec.typestore.serialize_cdr(msg, "sensor_msgs/msg/Image").tobytes()


def _string(rec: EpisodeRecorder, text: str) -> bytes:
    msg = rec.typestore.types["std_msgs/msg/String"](data=text)
    return rec.typestore.serialize_cdr(msg, "std_msgs/msg/String").tobytes()


def test_recorded_bag_reads_back_with_rosbags_mcap_and_our_reader(tmp_path):
    rec = _recorder(tmp_path, compression="zstd")
    rec.write("/instruction", 5, _string(rec, "stack the cups"))  # latched, before the episode
    rec.write("/image", 6, _image(rec, 99))  # no episode yet: not recorded
    record = rec.start(now_ns=1_000)
    assert record["instruction"] == ""  # the node fills it from the latched topic
    for k in range(12):
        rec.write("/image", 2_000 + k, _image(rec, k))
    record, message = rec.end(outcome="success", now_ns=9_000)
    assert record["status"] == "complete" and record["reward"] == 1.0, message
    bag_dir = rec.record_dir / record["bag"]

    # rosbags AnyReader with a typestore that does not know qt_ros types: it learns them
    with AnyReader([bag_dir], default_typestore=get_typestore(Stores.EMPTY)) as reader:
        images = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                  if c.topic == "/image"]
        events = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                  if c.msgtype == EPISODE_EVENT]
        strings = [reader.deserialize(raw, c.msgtype).data for c, _, raw in reader.messages()
                   if c.topic == "/instruction"]
    assert [int(m.data[0]) for m in images] == list(range(12))
    assert [m.header.stamp.sec for m in images] == list(range(12))
    assert [e.event for e in events] == [0, 1] and events[1].outcome == "success"
    assert strings == ["stack the cups"]

    # the mcap library with its own ROS 2 decoder, and the custom data it keeps
    mcap_file = next(bag_dir.glob("*.mcap"))
    with open(mcap_file, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        decoded = [(c.topic, m) for _, c, _, m in reader.iter_decoded_messages()]
        meta = {r.name: r.metadata for r in reader.iter_metadata()}
    assert [bytes(m.data)[0] for t, m in decoded if t == "/image"] == list(range(12))
    assert "qt_ros.episode_id" in meta["rosbag2"]["serialized_metadata"]

    # our reader: complete, custom data decoded
    with BagReader.open(bag_dir) as bag:
        assert bag.complete and not bag.problems
        assert bag.topics["/image"].count == 12
        ep = bag.episode
    assert ep["episode_id"] == record["episode_id"] and ep["robot"] == "arm1"
    assert ep["outcome"] == "success" and ep["reward"] == 1.0
    assert ep["topics"]["image"] == "/image"


def test_label_after_the_end_and_relabel_keep_history(tmp_path):
    rec = _recorder(tmp_path)
    record = rec.start(instruction="open the drawer", now_ns=1)
    rec.write("/image", 2, _image(rec, 1))
    rec.end(outcome="unknown", now_ns=3)
    episode = record["episode_id"]
    with pytest.raises(RecorderError, match="unknown episode"):
        rec.label("nope", "success")
    rec.label(episode, "success", now_ns=4)
    labelled = rec.label(episode, "failure", now_ns=5)  # changed later
    assert labelled["outcome"] == "failure" and labelled["reward"] == 0.0
    assert [entry["outcome"] for entry in labelled["labels"]] == ["success", "failure"]
    with BagReader.open(rec.record_dir / episode) as bag:
        assert bag.episode["outcome"] == "failure" and bag.episode["reward"] == 0.0
    # an explicit reward wins over the outcome's
    assert rec.label(episode, "success", reward=0.5)["reward"] == 0.5
    # end_episode for an episode that already ended (terminate) labels it
    record2 = rec.start(instruction="x", now_ns=10)
    rec.end(outcome="unknown", reason="policy terminate", now_ns=11)
    again, message = rec.end(record2["episode_id"], outcome="success", now_ns=12)
    assert again["outcome"] == "success" and "already ended" in message
    with pytest.raises(RecorderError, match="no episode is recording"):
        rec.end(outcome="success")


def test_refusals_say_why(tmp_path):
    rec = _recorder(tmp_path)
    rec.start(episode_id="ep-1", now_ns=1)
    with pytest.raises(RecorderError, match="still recording"):
        rec.start(now_ns=2)
    with pytest.raises(RecorderError, match="still recording"):
        rec.label("ep-1", "success")
    rec.end(now_ns=3)
    with pytest.raises(RecorderError, match="already used"):
        rec.start(episode_id="ep-1")
    with pytest.raises(RecorderError, match="invalid episode id"):
        rec.start(episode_id="../escape")
    with pytest.raises(RecorderError, match="unknown outcome"):
        rec.label("ep-1", "great")


def test_low_disk_refuses_to_start_and_stops_a_running_episode(tmp_path):
    free = {"mb": 50.0}
    rec = _recorder(tmp_path, free=lambda: free["mb"], min_free_space_mb=100.0,
                    flush_period=0.05)
    with pytest.raises(RecorderError, match="below min_free_space_mb"):
        rec.start()
    free["mb"] = 5000.0
    record = rec.start(instruction="pour", now_ns=1)
    for k in range(3):
        rec.write("/image", 10 + k, _image(rec, k))
    wait_for(lambda: rec.written == 4, 5, what="the started event and 3 images on disk")
    assert rec.poll(now_ns=20) is None
    free["mb"] = 60.0
    outcome, reason = wait_for(lambda: rec.poll(now_ns=30), 5, what="the disk-space stop")
    assert outcome == "aborted" and "disk space low" in reason
    assert rec.write("/image", 40, _image(rec, 9)) is False  # nothing more is written
    ended, _ = rec.end(outcome=outcome, reason=reason, now_ns=50)
    assert ended["status"] == "complete" and ended["end_reason"].startswith("disk space low")
    catalog = json.loads((rec.record_dir / "catalog.json").read_text())
    assert catalog["episodes"][record["episode_id"]]["outcome"] == "aborted"
    with BagReader.open(rec.record_dir / record["episode_id"]) as bag:
        assert bag.topics["/image"].count == 3


def test_timeout_is_reported_by_poll(tmp_path):
    rec = _recorder(tmp_path, max_episode_duration=2.0, timeout_outcome="failure")
    rec.start(now_ns=0)
    assert rec.poll(now_ns=1_900_000_000) is None
    assert rec.poll(now_ns=2_000_000_000) == ("failure", "timeout after 2 s")
    rec.end("", "failure", reason="timeout", now_ns=2_000_000_000)


def test_catalog_write_failure_leaves_the_old_catalog(tmp_path, monkeypatch):
    cat = EpisodeCatalog(tmp_path)
    cat.update("a", status="complete", outcome="success")
    before = (tmp_path / "catalog.json").read_bytes()

    def full_disk(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_module.os, "replace", full_disk)
    with pytest.raises(CatalogError, match="previous catalog is unchanged"):
        cat.update("b", status="recording")
    monkeypatch.undo()
    assert (tmp_path / "catalog.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.json", "catalog.json.lock"]
    assert set(cat.episodes()) == {"a"}


KILLER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path[:0] = [{test_dir!r}, {test_root!r}]
    from test_bags import _recorder, _image
    rec = _recorder(Path(sys.argv[1]), flush_period=0.1, compression=sys.argv[2])
    rec.start(instruction="wipe the table", episode_id="crash", now_ns=1)
    for k in range(40):
        rec.write("/image", 100 + k, _image(rec, k))
        time.sleep(0.01)
    time.sleep(0.5)  # everything flushed
    for k in range(40, 45):  # never flushed: lost with the process
        rec.write("/image", 100 + k, _image(rec, k))
    os.kill(os.getpid(), 9)
""")


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_sigkill_leaves_a_readable_incomplete_bag_that_repair_completes(tmp_path, compression):
    script = tmp_path / "killer.py"
    here = Path(__file__).parent
    script.write_text(KILLER.format(test_dir=str(here), test_root=str(here.parent)))
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), compression],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    record_dir = tmp_path / "episodes"
    bag_dir = record_dir / "crash"
    assert not (bag_dir / "metadata.yaml").exists()
    catalog = json.loads((record_dir / "catalog.json").read_text())  # intact JSON
    assert catalog["episodes"]["crash"]["status"] == "recording"

    with BagReader.open(bag_dir) as bag:
        assert not bag.complete
        assert "incomplete bag" in bag.problems[0]
        values = [int(bag.deserialize(d, t).data[0]) for _, t, _, d in bag.messages(["/image"])]
        assert bag.episode == {}  # no metadata.yaml...
    assert values[:40] == list(range(40))  # ...but every flushed message is there
    assert diagnose(bag_dir)[0] == "incomplete"

    # a restarted recorder marks it incomplete
    assert _recorder(tmp_path).recover() == ["crash"]
    assert EpisodeCatalog(record_dir).get("crash")["status"] == "incomplete"

    result = repair_bag(bag_dir)
    assert result.state == "repaired", result.detail
    assert (bag_dir / "crash.mcap.damaged").exists()
    assert diagnose(bag_dir)[0] == "ok"
    with AnyReader([bag_dir]) as reader:
        repaired = [int(reader.deserialize(raw, c.msgtype).data[0])
                    for c, _, raw in reader.messages() if c.topic == "/image"]
    assert repaired == values
    with BagReader.open(bag_dir) as bag:
        assert bag.complete and bag.episode["episode_id"] == "crash"
        assert bag.episode["instruction"] == "wipe the table"
    assert EpisodeCatalog(record_dir).get("crash")["status"] == "repaired"
    assert repair_bag(bag_dir).state == "ok"  # idempotent


def test_unreadable_bags_give_clear_errors(tmp_path):
    with pytest.raises(BagError, match="no such bag"):
        BagReader.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="not a rosbag2 bag"):
        BagReader.open(tmp_path / "empty")
    rec = _recorder(tmp_path, flush_period=0.0)  # a chunk per message
    record = rec.start(now_ns=1)
    for k in range(50):
        rec.write("/image", 10 + k, _image(rec, k))
    rec.end(now_ns=100)
    bag_dir = rec.record_dir / record["bag"]
    data = next(bag_dir.glob("*.mcap"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # truncated copy
    with pytest.raises(BagError, match="qt-ros repair"):
        with BagReader.open(bag_dir) as bag:
            list(bag.messages())
    (bag_dir / "metadata.yaml").write_text("rosbag2_bagfile_information: [unbalanced")
    with pytest.raises(BagError, match="unreadable rosbag2 metadata"):
        BagReader.open(bag_dir)
    # repair rebuilds the truncated bag from what is readable
    result = repair_bag(bag_dir)
    assert result.state == "repaired", result.detail
    with BagReader.open(bag_dir) as bag:
        count = bag.topics["/image"].count
    assert 0 < count < 50


def test_find_bags_expands_a_record_dir(tmp_path):
    rec = _recorder(tmp_path)
    for i in range(2):
        rec.start(episode_id=f"e{i}", now_ns=i * 10 + 1)
        rec.end(now_ns=i * 10 + 2)
    assert [p.name for p in find_bags([rec.record_dir])] == ["e0", "e1"]
    assert [p.name for p in find_bags([rec.record_dir / "e1" / "e1.mcap"])] == ["e1"]


def test_sqlite_bag_without_metadata_is_reindexed(tmp_path):
    from rosbags.rosbag2 import Writer

    store = get_typestore(Stores.ROS2_KILTED)
    path = tmp_path / "demo"
    with Writer(path, version=9) as writer:
        conn = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        for k in range(5):
            msg = store.types["std_msgs/msg/String"](data=f"m{k}")
            writer.write(conn, 100 + k, store.serialize_cdr(msg, "std_msgs/msg/String"))
    (path / "metadata.yaml").unlink()
    with pytest.raises(BagError, match="qt-ros repair"):
        BagReader.open(path)
    result = repair_bag(path)
    assert result.state == "reindexed", result.detail
    info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["message_count"] == 5
    with BagReader.open(path) as bag:
        texts = [bag.deserialize(d, t).data for _, t, _, d in bag.messages()]
    assert texts == [f"m{k}" for k in range(5)]
    assert os.access(path / "metadata.yaml", os.R_OK)
