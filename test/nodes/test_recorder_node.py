"""recorder_node in a real process: episodes in, bags and a dataset out.

The test process publishes (camera, instruction, policy steps, arm and gripper commands) and
calls the services through a probe node; the recorder runs in its own process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import PoseArray, TwistStamped
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from policy_node_support import EVENTS, RELIABLE, Probe
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float64

from qt_ros.data.dataset_reader import DatasetStore
from qt_ros.episodes.bag_reader import BagReader
from qt_ros.episodes.catalog import EpisodeCatalog
from qt_ros.msg import EpisodeEvent, PolicyStep
from qt_ros.nodes.recorder_node import _definition_from_class
from qt_ros.qtransformer.tokenizer import ActionTokenizer
from qt_ros.srv import EndEpisode, LabelEpisode, StartEpisode

from conftest import REPO, python_args, wait_for

pytestmark = pytest.mark.ros
TOK = ActionTokenizer()


def recorder_args(record_dir: Path, **params) -> list[str]:
    args = python_args("-m", "qt_ros.nodes.recorder_node", "--ros-args",
                       "-p", f"record_dir:={record_dir}", "-p", "robot:=testbot")
    for name, value in params.items():
        args += ["-p", f"{name}:={value}"]
    return args


def colour(k: int) -> tuple[int, int, int]:
    return (k * 17) % 256, (k * 41 + 3) % 256, (255 - k * 9) % 256


class Robot:
    """The test process's publishers: what a camera and the policy node would publish."""

    def __init__(self, probe: Probe):
        self.probe = probe
        self.image = probe.publisher(Image, "image", RELIABLE)
        self.step = probe.publisher(PolicyStep, "policy_step", RELIABLE)
        self.arm = probe.publisher(TwistStamped, "arm_command", RELIABLE)
        self.gripper = probe.publisher(Float64, "gripper_command", RELIABLE)
        self.events = probe.collect(EpisodeEvent, "episode_events", EVENTS)

    def wait_matched(self, recorder) -> None:
        pubs = (self.image, self.step, self.arm, self.gripper)

        def matched():
            assert recorder.alive(), recorder.output()
            return all(p.get_subscription_count() > 0 for p in pubs)
        wait_for(matched, 60, what="the recorder to subscribe")

    def publish_step(self, k: int, bins: np.ndarray, episode_id: str, terminate=False) -> None:
        img = Image(height=6, width=8, encoding="rgb8", step=24)
        img.header.frame_id = "camera"
        img.data = bytes(np.broadcast_to(np.asarray(colour(k), np.uint8), (6, 8, 3)).tobytes())
        self.image.publish(img)
        wait_short()
        msg = PolicyStep(episode_id=episode_id, instruction="stack the blocks",
                         action_bins=[int(b) for b in bins],
                         action=[float(v) for v in TOK.decode(bins)],
                         dimension_names=TOK.names, q_values=[0.5] * TOK.num_dims,
                         terminate=terminate, model_id="ckpt-7")
        self.step.publish(msg)
        arm = TwistStamped()
        arm.twist.linear.x = float(k)
        self.arm.publish(arm)
        self.gripper.publish(Float64(data=float(k % 2)))

    def event_kinds(self, episode_id: str) -> list[tuple[int, str, str]]:
        return [(e.event, e.outcome, e.message) for _, e in list(self.events)
                if e.episode_id == episode_id]


def wait_short(seconds: float = 0.02) -> None:
    import time
    time.sleep(seconds)


@pytest.fixture
def probe(ros_env, monkeypatch):
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    p = Probe(int(ros_env["ROS_DOMAIN_ID"]))
    yield p
    p.close()


def convert(bags: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "qt_ros.cli", "convert", str(bags), "--out",
                           str(out), "--gamma", "0.9", "--image-size", "6x8", "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_round_trip_publish_record_label_convert(spawn, probe, tmp_path):
    record_dir = tmp_path / "episodes"
    recorder = spawn(recorder_args(record_dir, flush_period=0.2), name="recorder")
    robot = Robot(probe)
    probe.instruction("stack the blocks")  # latched: the episode takes it
    robot.wait_matched(recorder)
    wait_short(0.5)  # the latched instruction reaches the recorder
    start = probe.call(StartEpisode, "/recorder/start_episode", StartEpisode.Request(),
                       timeout=30)
    assert start.success, start.message
    episode = start.episode_id
    rng = np.random.default_rng(3)
    bins = np.stack([rng.integers(0, b, size=12) for b in TOK.bins], axis=1)
    bins[:, -1] = 0
    for k in range(12):
        robot.publish_step(k, bins[k], episode)
        wait_short(0.06)
    wait_short(0.5)
    end = probe.call(EndEpisode, "/recorder/end_episode", EndEpisode.Request(outcome="unknown"))
    assert end.success and end.bag_path == str(record_dir / episode), end.message
    label = probe.call(LabelEpisode, "/recorder/label_episode",
                       LabelEpisode.Request(episode_id=episode, outcome="success"))
    assert label.success, label.message
    wait_for(lambda: len(robot.event_kinds(episode)) == 3, 10, what="three episode events")
    kinds = robot.event_kinds(episode)
    assert [k[0] for k in kinds] == [EpisodeEvent.STARTED, EpisodeEvent.ENDED,
                                     EpisodeEvent.LABELLED]
    assert kinds[2][1] == "success"

    bag_dir = Path(end.bag_path)
    # rosbags, knowing nothing of qt_ros types, learns them from the bag
    with AnyReader([bag_dir], default_typestore=get_typestore(Stores.EMPTY)) as reader:
        by_topic: dict[str, list] = {}
        for conn, _, raw in reader.messages():
            by_topic.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    assert [tuple(m.data[:3]) for m in by_topic["/image"]] == [colour(k) for k in range(12)]
    assert [list(m.action_bins) for m in by_topic["/policy_step"]] == bins.tolist()
    assert [m.twist.linear.x for m in by_topic["/arm_command"]] == [float(k) for k in range(12)]
    assert [m.data for m in by_topic["/gripper_command"]] == [float(k % 2) for k in range(12)]
    assert [m.data for m in by_topic["/instruction"]] == ["stack the blocks"]
    assert [m.event for m in by_topic["/episode_events"]] == [0, 1]
    # the mcap library decodes the same file on its own
    with open(next(bag_dir.glob("*.mcap")), "rb") as f:
        decoded = [m for _, c, _, m in make_reader(
            f, decoder_factories=[DecoderFactory()]).iter_decoded_messages(
                topics=["/policy_step"])]
    assert [list(m.action_bins) for m in decoded] == bins.tolist()
    with BagReader.open(bag_dir) as bag:
        meta = bag.episode
    assert meta["outcome"] == "success" and meta["reward"] == 1.0  # label after the end
    assert meta["instruction"] == "stack the blocks" and meta["robot"] == "testbot"
    assert meta["checkpoint"] == "ckpt-7"
    assert EpisodeCatalog(record_dir).get(episode)["outcome"] == "success"

    result = convert(record_dir, tmp_path / "dataset")
    assert result.returncode == 0, result.stdout + result.stderr
    store = DatasetStore(tmp_path / "dataset")
    assert [e["episode_id"] for e in store.episodes] == [episode]
    np.testing.assert_array_equal(store.episode_field(0, "action_bins"), bins)
    frames = np.asarray(store.episode_field(0, "frames"))
    assert [tuple(f[0, 0]) for f in frames] == [colour(k) for k in range(12)]
    reward = np.zeros(12, np.float32)
    reward[-1] = 1.0
    np.testing.assert_array_equal(store.episode_field(0, "reward"), reward)
    np.testing.assert_array_equal(store.episode_field(0, "done"), reward.astype(np.uint8))
    np.testing.assert_allclose(store.episode_field(0, "mc_return"), 0.9 ** np.arange(12)[::-1],
                               rtol=1e-6)
    assert store.instructions == ["stack the blocks"]


def test_sigkill_mid_episode_keeps_flushed_data(spawn, probe, tmp_path):
    record_dir = tmp_path / "episodes"
    recorder = spawn(recorder_args(record_dir, flush_period=0.2), name="recorder")
    robot = Robot(probe)
    robot.wait_matched(recorder)
    start = probe.call(StartEpisode, "/recorder/start_episode",
                       StartEpisode.Request(instruction="wipe", episode_id="doomed"), timeout=30)
    assert start.success, start.message
    for k in range(10):
        robot.publish_step(k, np.zeros(TOK.num_dims, np.int64), "doomed")
        wait_short(0.05)
    wait_short(1.0)  # several flush periods
    recorder.send_signal(signal.SIGKILL)
    wait_for(lambda: not recorder.alive(), 10, what="the recorder to die")

    bag_dir = record_dir / "doomed"
    assert not (bag_dir / "metadata.yaml").exists()
    catalog = json.loads((record_dir / "catalog.json").read_text())
    assert catalog["episodes"]["doomed"]["status"] == "recording"
    with BagReader.open(bag_dir) as bag:
        assert not bag.complete
        assert bag.topics["/image"].count == 10 and bag.topics["/policy_step"].count == 10
    result = convert(record_dir, tmp_path / "dataset")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "incomplete bag" in result.stdout
    store = DatasetStore(tmp_path / "dataset")
    assert store.episodes[0]["length"] == 10 and store.episodes[0]["incomplete"]
    assert store.instructions == ["wipe"]

    # a new recorder marks the episode incomplete; repair makes the bag complete
    recorder = spawn(recorder_args(record_dir), name="recorder2")
    wait_for(lambda: EpisodeCatalog(record_dir).get("doomed")["status"] == "incomplete", 60,
             what="the restarted recorder to mark the episode")
    repair = subprocess.run(
        [sys.executable, "-m", "qt_ros.cli", "repair", str(bag_dir)], cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO),
                                                          os.environ.get("PYTHONPATH", "")])},
        capture_output=True, text=True, timeout=60)
    assert repair.returncode == 0 and "repaired" in repair.stdout, repair.stdout + repair.stderr
    with AnyReader([bag_dir]) as reader:
        assert sum(1 for c, _, _ in reader.messages() if c.topic == "/image") == 10


def test_terminate_timeout_and_shutdown_end_episodes(spawn, probe, tmp_path):
    record_dir = tmp_path / "episodes"
    recorder = spawn(recorder_args(record_dir, max_episode_duration=1.5), name="recorder")
    robot = Robot(probe)
    robot.wait_matched(recorder)

    def start(name: str) -> str:
        response = probe.call(StartEpisode, "/recorder/start_episode",
                              StartEpisode.Request(instruction="go", episode_id=name), timeout=30)
        assert response.success, response.message
        return response.episode_id

    # the policy's terminate flag ends it; the policy's own end call then labels it
    start("terminated")
    robot.publish_step(0, np.zeros(TOK.num_dims, np.int64), "terminated", terminate=True)
    wait_for(lambda: any(k[0] == EpisodeEvent.ENDED for k in robot.event_kinds("terminated")),
             10, what="the end on terminate")
    assert robot.event_kinds("terminated")[-1][2] == "policy terminate"
    late = probe.call(EndEpisode, "/recorder/end_episode",
                      EndEpisode.Request(episode_id="terminated", outcome="success"))
    assert late.success and "already ended" in late.message, late.message
    assert EpisodeCatalog(record_dir).get("terminated")["outcome"] == "success"

    # max_episode_duration ends it as timeout_outcome (failure)
    start("slow")
    wait_for(lambda: any(k[0] == EpisodeEvent.ENDED for k in robot.event_kinds("slow")), 10,
             what="the timeout")
    ended = [k for k in robot.event_kinds("slow") if k[0] == EpisodeEvent.ENDED][0]
    assert ended[1] == "failure" and "timeout" in ended[2]

    # shutdown ends it as aborted, with a complete bag
    start("interrupted")
    assert recorder.stop(signal.SIGINT) == 0, recorder.output()
    record = EpisodeCatalog(record_dir).get("interrupted")
    assert record["outcome"] == "aborted" and record["status"] == "complete"
    assert record["end_reason"] == "recorder shutdown"
    assert (record_dir / "interrupted" / "metadata.yaml").exists()


def test_double_ctrl_c_during_an_episode_still_closes_the_bag(spawn, probe, tmp_path):
    """`ros2 launch` in a terminal: Ctrl-C reaches the recorder twice (the terminal's process
    group, then launch). The second signal must not interrupt closing the episode's bag."""
    record_dir = tmp_path / "episodes"
    recorder = spawn(recorder_args(record_dir), name="recorder")
    robot = Robot(probe)
    robot.wait_matched(recorder)
    start = probe.call(StartEpisode, "/recorder/start_episode",
                       StartEpisode.Request(instruction="stack", episode_id="ctrl-c"), timeout=30)
    assert start.success, start.message
    for k in range(20):
        robot.publish_step(k, np.zeros(TOK.num_dims, np.int64), "ctrl-c")
        wait_short(0.02)
    wait_short(0.3)
    recorder.send_signal(signal.SIGINT)
    wait_short(0.05)
    recorder.send_signal(signal.SIGINT)
    wait_for(lambda: not recorder.alive(), 20, what="the recorder to exit")
    assert recorder.popen.returncode == 0, recorder.output()
    record = EpisodeCatalog(record_dir).get("ctrl-c")
    assert record["status"] == "complete" and record["outcome"] == "aborted"
    with BagReader.open(record_dir / "ctrl-c") as bag:
        assert bag.complete
        assert bag.topics["/image"].count == 20 and bag.topics["/policy_step"].count == 20


def test_low_disk_space_refuses_to_start_with_an_error_event(spawn, probe, tmp_path):
    recorder = spawn(recorder_args(tmp_path / "episodes", min_free_space_mb=1e12),
                     name="recorder")
    events = probe.collect(EpisodeEvent, "episode_events", EVENTS)
    response = probe.call(StartEpisode, "/recorder/start_episode",
                          StartEpisode.Request(instruction="x"), timeout=60)
    assert not response.success and "min_free_space_mb" in response.message
    wait_for(lambda: any(e.event == EpisodeEvent.ERROR for _, e in list(events)), 10,
             what="an error event")
    assert recorder.alive()


@pytest.mark.parametrize("cls,name", [(PoseArray, "geometry_msgs/msg/PoseArray"),
                                      (CameraInfo, "sensor_msgs/msg/CameraInfo")])
def test_definitions_generated_from_rclpy_classes_match_ros(cls, name):
    """Extra topics of types rosbags does not know get their definition from the rclpy class."""
    store = get_typestore(Stores.EMPTY)
    msgdef, rihs01 = _definition_from_class(store, cls, name)
    assert rihs01 == get_typestore(Stores.ROS2_KILTED).hash_rihs01(name)
    assert msgdef.startswith("std_msgs/Header header\n")


def _start_and_lose_the_answer(domain_id: int, request, arrived) -> None:
    """A start_episode whose answer the caller never reads (it timed out, or crashed): sent from
    a node nobody spins, which is gone once the request has ``arrived()``."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id,
               signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("impatient_client", context=context)
    try:
        client = node.create_client(StartEpisode, "/recorder/start_episode")
        wait_for(client.service_is_ready, 60, what="start_episode")
        client.call_async(request)
        wait_for(arrived, 30, what="the first start")
    finally:
        node.destroy_node()
        context.try_shutdown()


def test_a_retried_start_whose_answer_was_lost_gets_the_running_id(spawn, probe, ros_env,
                                                                    tmp_path):
    domain_id = int(ros_env["ROS_DOMAIN_ID"])
    record_dir = tmp_path / "episodes"
    spawn(recorder_args(record_dir), name="recorder")
    events = probe.collect(EpisodeEvent, "episode_events", EVENTS)

    def started(match) -> list:
        return [e for _, e in list(events) if e.event == EpisodeEvent.STARTED and match(e)]

    # a client-chosen id: the retry is the running episode, whenever it comes
    request = StartEpisode.Request(instruction="stack", episode_id="chosen")
    _start_and_lose_the_answer(domain_id, request,
                               lambda: started(lambda e: e.episode_id == "chosen"))
    retry = probe.call(StartEpisode, "/recorder/start_episode", request)
    assert retry.success and retry.episode_id == "chosen", retry.message
    assert retry.bag_path == str(record_dir / "chosen") and "repeats" in retry.message
    other = probe.call(StartEpisode, "/recorder/start_episode",
                       StartEpisode.Request(instruction="wipe", episode_id="other"))
    assert not other.success and "still recording" in other.message
    assert other.episode_id == "chosen"  # a refusal names what is recording
    assert probe.call(EndEpisode, "/recorder/end_episode",
                      EndEpisode.Request(episode_id="chosen")).success

    # no id: the same instruction again, soon after, is the same request
    request = StartEpisode.Request(instruction="wipe")
    _start_and_lose_the_answer(domain_id, request,
                               lambda: started(lambda e: e.instruction == "wipe"))
    first = started(lambda e: e.instruction == "wipe")[0]
    retry = probe.call(StartEpisode, "/recorder/start_episode", request)
    assert retry.success and retry.episode_id == first.episode_id, retry.message
    assert probe.call(EndEpisode, "/recorder/end_episode",
                      EndEpisode.Request(episode_id=retry.episode_id)).success
    assert len(started(lambda e: True)) == 2  # one STARTED per episode, none for a retry
    assert sorted(EpisodeCatalog(record_dir).episodes()) == sorted(["chosen", first.episode_id])


def test_a_policy_terminating_on_its_first_step_is_labelled_once(spawn, probe, tmp_path):
    """The policy's terminate step ends the episode and its own end_episode call follows at
    once; the simulator labels every episode that ends without an outcome. One ENDED, one
    LABELLED, one label in the catalog (the end call used to publish a second ENDED)."""
    record_dir = tmp_path / "episodes"
    events = probe.collect(EpisodeEvent, "episode_events", EVENTS)
    recorder = spawn(recorder_args(record_dir), name="recorder")
    sim = spawn(python_args("-m", "qt_ros.nodes.sim_robot_node", "--ros-args",
                            "-p", "image_width:=64", "-p", "image_height:=64"), name="sim")
    step = probe.publisher(PolicyStep, "policy_step", RELIABLE)

    def ready() -> bool:
        assert recorder.alive() and sim.alive(), recorder.output() + sim.output()
        return (step.get_subscription_count() > 0  # the recorder
                and probe.node.count_subscribers("/episode_events") >= 2)  # probe and sim
    wait_for(ready, 90, what="the recorder and the simulator")
    wait_short(1.0)  # the simulator's label client finds the recorder's service

    def count(episode: str, kind: int) -> int:
        return sum(1 for _, e in list(events) if e.episode_id == episode and e.event == kind)

    for k in range(2):
        episode = f"first-step-{k}"
        start = probe.call(StartEpisode, "/recorder/start_episode",
                           StartEpisode.Request(instruction="lift", episode_id=episode),
                           timeout=30)
        assert start.success, start.message
        step.publish(PolicyStep(episode_id=episode, terminate=True, model_id="m"))
        end = probe.call(EndEpisode, "/recorder/end_episode",
                         EndEpisode.Request(episode_id=episode, outcome="unknown"))
        assert end.success, end.message
        wait_for(lambda e=episode: count(e, EpisodeEvent.LABELLED), 20, what="the label")
        wait_short(1.5)  # a second label would have come by now
        assert count(episode, EpisodeEvent.ENDED) == 1
        assert count(episode, EpisodeEvent.LABELLED) == 1
        assert len(EpisodeCatalog(record_dir).get(episode)["labels"]) == 1


def test_the_last_ticks_messages_still_on_their_way_at_the_end_are_recorded(spawn, probe,
                                                                            tmp_path):
    """A state published with the last frame can reach the recorder after the command that
    answered the frame and the end that followed it. The bag stays open ``end_grace`` s after an
    end by end_episode or by terminate: a frame published 0.3 s after the end (grace 1.5 s) is in
    the bag, and the end's answer comes after the grace. With the grace 0 it would be lost."""
    record_dir = tmp_path / "episodes"
    recorder = spawn(recorder_args(record_dir, end_grace=1.5), name="recorder")
    robot = Robot(probe)
    robot.wait_matched(recorder)
    bins = np.zeros(TOK.num_dims, np.int64)

    def frames(episode: str) -> list[tuple[int, ...]]:
        with BagReader.open(record_dir / episode) as bag:
            return [tuple(bag.deserialize(data, msgtype).data[:3])
                    for _, msgtype, _, data in bag.messages({"/image"})]

    for episode in ("ended", "terminated"):
        start = probe.call(StartEpisode, "/recorder/start_episode",
                           StartEpisode.Request(instruction="go", episode_id=episode), timeout=30)
        assert start.success, start.message
        robot.publish_step(0, bins, episode)
        wait_short(0.3)
        late = threading.Timer(0.3, robot.image.publish, args=(Image(
            height=1, width=1, encoding="rgb8", step=3, data=bytes(colour(1))),))
        late.start()
        began = time.monotonic()
        if episode == "ended":
            end = probe.call(EndEpisode, "/recorder/end_episode",
                             EndEpisode.Request(episode_id=episode, outcome="success"),
                             timeout=30)
            assert end.success, end.message
            assert time.monotonic() - began >= 1.5  # answered once the bag is complete
        else:
            robot.step.publish(PolicyStep(episode_id=episode, terminate=True, model_id="m"))
            wait_for(lambda e=episode: any(k[0] == EpisodeEvent.ENDED
                                           for k in robot.event_kinds(e)),
                     10, what="the end on terminate")
        late.join()
        assert frames(episode) == [colour(0), colour(1)], episode
        assert EpisodeCatalog(record_dir).get(episode)["status"] == "complete"


def test_a_full_disk_with_the_guard_off_keeps_catalog_and_disk_in_agreement(ros_env, tmp_path):
    """min_free_space_mb 0 and a 16 MB tmpfs (a private mount namespace) filled by an episode:
    ERROR and an aborted end; the catalog matches the bags at once; a start while full is
    refused and leaves nothing; recording resumes once space is back; earlier bags intact."""
    from qt_ros.faults.recorder_faults import run_disk_full

    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("`unshare -rm` (a private tmpfs) is not allowed on this machine")
    report = run_disk_full(tmp_path, int(ros_env["ROS_DOMAIN_ID"]))
    assert report["error_events"] >= 1 and report["ended"] == ["aborted"], report
    assert report["disagreements_while_full"] == [], report
    assert "is full" in report["start_while_full"], report
    assert report["orphans_while_full"] == [] and report["orphans_after"] == [], report
    assert report["resumed"] and report["disagreements_after"] == [], report
    assert report["earlier_bag_intact"] is True, report
