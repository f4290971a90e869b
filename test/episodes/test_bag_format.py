"""What the bags carry for other tools: QoS profiles, type hashes, ros_distro, CRCs (read back
with rosbags and with the mcap + mcap-ros2-support readers); trailing CDR padding accepted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from mcap.records import Chunk, DataEnd, Footer
from mcap.stream_reader import StreamReader
from mcap_ros2.decoder import DecoderFactory
from rclpy.serialization import serialize_message
from rosbags.highlevel import AnyReader
from rosbags.interfaces import QosDurability, QosReliability
from sensor_msgs.msg import JointState

from qt_ros.episodes.bag_metadata import BagError
from qt_ros.episodes.bag_reader import BagReader
from qt_ros.episodes.bag_repair import repair_bag
from qt_ros.episodes.bag_writer import BagWriter, offered_qos
from qt_ros.episodes.interfaces import POLICY_STEP
from qt_ros.episodes.recorder import EpisodeRecorder, RecorderConfig
from qt_ros.episodes.synthetic import write_episode
from qt_ros.faults.bag_faults import flip_byte
from qt_ros.nodes.qos import recorder_qos

STATE = "sensor_msgs/msg/JointState"


def _ament_type_hash(msgtype: str) -> str:
    """The RIHS01 hash the ROS wheels' generated type support ships (share/<pkg>/msg/X.json)."""
    pkg, _, name = msgtype.split("/")
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        path = Path(prefix) / "share" / pkg / "msg" / f"{name}.json"
        if path.exists():
            hashes = json.loads(path.read_text())["type_hashes"]
            return next(h["hash_string"] for h in hashes if h["type_name"] == msgtype)
    pytest.skip(f"no type description of {msgtype} installed")


def _record(tmp_path: Path, monkeypatch, distro: str | None) -> Path:
    """One episode through the recorder core, topics declared with the node's QoS profiles."""
    if distro is None:
        monkeypatch.delenv("ROS_DISTRO", raising=False)
    else:
        monkeypatch.setenv("ROS_DISTRO", distro)
    rec = EpisodeRecorder(RecorderConfig(record_dir=tmp_path / "episodes", flush_period=0.0),
                          free_space_mb=lambda: 1e9)
    for topic, msgtype, qos in (("/instruction", "std_msgs/msg/String", "latched"),
                                ("/image", "sensor_msgs/msg/Image", "sensor_data"),
                                ("/policy_step", POLICY_STEP, "reliable")):
        rec.add_topic(topic, msgtype, role=topic[1:], latched=qos == "latched",
                      qos=offered_qos(recorder_qos(qos, 7)))
    types = rec.typestore.types
    rec.write("/instruction", 1, rec.typestore.serialize_cdr(
        types["std_msgs/msg/String"](data="pick"), "std_msgs/msg/String").tobytes())
    rec.start(episode_id="qos", now_ns=10)
    for k in range(3):
        image = types["sensor_msgs/msg/Image"](
            header=types["std_msgs/msg/Header"](
                stamp=types["builtin_interfaces/msg/Time"](sec=k, nanosec=0), frame_id="c"),
            height=2, width=2, encoding="rgb8", is_bigendian=0, step=6,
            data=np.full(12, k, np.uint8))
        rec.write("/image", 20 + k, rec.typestore.serialize_cdr(
            image, "sensor_msgs/msg/Image").tobytes())
    rec.end(outcome="success", now_ns=100)
    return tmp_path / "episodes" / "qos"


@pytest.mark.parametrize("distro", [None, "jazzy"])
def test_bags_carry_recorded_qos_type_hashes_and_ros_distro(tmp_path, monkeypatch, distro):
    bag = _record(tmp_path, monkeypatch, distro)
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["ros_distro"] == (distro or "kilted")
    # rosbags reads the QoS ros2 bag play would offer: the latched instruction stays latched
    with AnyReader([bag]) as reader:
        conns = {c.topic: c for c in reader.connections}
        instruction = conns["/instruction"].ext.offered_qos_profiles
        assert [(q.durability, q.reliability, q.depth) for q in instruction] == [
            (QosDurability.TRANSIENT_LOCAL, QosReliability.RELIABLE, 10)]
        image = conns["/image"].ext.offered_qos_profiles
        assert [(q.durability, q.reliability, q.depth) for q in image] == [
            (QosDurability.VOLATILE, QosReliability.BEST_EFFORT, 7)]
        events = conns["/episode_events"].ext.offered_qos_profiles
        assert events[0].durability == QosDurability.TRANSIENT_LOCAL
        for topic, conn in conns.items():
            assert conn.digest == _ament_type_hash(conn.msgtype), topic
        assert sum(1 for _ in reader.messages()) == 6  # instruction, 3 images, 2 events
    # the mcap readers: the channel metadata rosbag2's reader looks for, every message decodes,
    # and every CRC is there and matches
    with open(bag / "qos.mcap", "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()], validate_crcs=True)
        channels = {c.topic: c for c in reader.get_summary().channels.values()}
        assert channels["/image"].metadata["topic_type_hash"] == \
            _ament_type_hash("sensor_msgs/msg/Image")
        assert "transient_local" in channels["/instruction"].metadata["offered_qos_profiles"]
        decoded = [m.data for _, _, _, m in reader.iter_decoded_messages(topics=["/image"])]
        assert [bytes(d)[0] for d in decoded] == [0, 1, 2]
        f.seek(0)
        records = list(StreamReader(f, validate_crcs=True, emit_chunks=True).records)
    chunks = [r for r in records if isinstance(r, Chunk)]
    assert len(chunks) >= 3 and all(c.uncompressed_crc for c in chunks)  # flushed per message
    assert next(r for r in records if isinstance(r, DataEnd)).data_section_crc != 0
    assert next(r for r in records if isinstance(r, Footer)).summary_crc != 0


def test_damaged_chunks_are_found_and_repair_keeps_the_intact_ones(tmp_path):
    truth = write_episode(tmp_path / "rec", "ep", 12, image_size=(32, 40), state_dim=2)
    bag = tmp_path / "copy" / "ep"
    shutil.copytree(truth["bag"], bag)
    with BagReader.open(bag) as reader:
        total = reader.message_count
        assert reader.verify() == []
    # a bag flushed in several chunks (the recorder's flush_period), one of them damaged
    many = tmp_path / "many" / "ep"
    writer = BagWriter(many, flush_period=0.0)
    with BagReader.open(bag) as reader:
        for topic, info in reader.topics.items():
            writer.add_topic(topic, info.msgtype)
        for m in reader.messages():
            writer.write(m.topic, m.log_time, m.data)
    writer.close({"qt_ros.episode_id": "ep"})
    flip_byte(many, np.random.default_rng(3))
    with BagReader.open(many) as reader:
        damage = reader.verify()
    assert len(damage) == 1 and "chunk of messages logged" in damage[0]
    result = repair_bag(many, check=True)
    assert result.state == "needs repair" and "damaged" in result.detail
    result = repair_bag(many)
    assert result.state == "repaired" and result.messages == total - 1, result.detail
    with BagReader.open(many) as reader:
        assert reader.verify() == [] and reader.message_count == total - 1


def test_trailing_cdr_padding_is_accepted_and_truncation_reported(tmp_path):
    # rclpy's serialize_message sizes the buffer by an estimate: 4-8 trailing bytes here
    padded = [serialize_message(JointState(name=["a", "b"], position=[0.5 * k, 1.0]))
              for k in range(3)]
    padded.append(serialize_message(JointState()))  # nothing but empty sequences
    writer = BagWriter(tmp_path / "js")
    writer.add_topic("/joint_states", STATE)
    for k, data in enumerate(padded):
        writer.write("/joint_states", k + 1, data)
    writer.close()
    with BagReader.open(tmp_path / "js") as bag:
        messages = list(bag.messages())
        values = [list(bag.deserialize(m.data, STATE).position) for m in messages]
        assert values == [[0.0, 1.0], [0.5, 1.0], [1.0, 1.0], []]
        exact = len(bag.typestore.serialize_cdr(bag.deserialize(padded[0], STATE), STATE))
        assert len(padded[0]) > exact + 3  # more than rosbags alone accepts
        with pytest.raises(BagError, match="could not be decoded"):
            bag.deserialize(padded[0][:exact - 4], STATE)  # really truncated
        with pytest.raises(BagError, match="size mismatch"):
            bag.deserialize(padded[0], "std_msgs/msg/Float64")  # another type's data
