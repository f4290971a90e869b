"""The simulated robot and the scripted demonstrator in real processes.

The test process plays the policy (twist + gripper commands) and watches the camera, joint
states, privileged state and success flag through a probe node; a recorder process checks that a
demonstration is ended by the demonstrator and labelled by the simulator's success detector.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from geometry_msgs.msg import TwistStamped
from policy_node_support import EVENTS, RELIABLE, SENSOR, messages
from rcl_interfaces.srv import DescribeParameters, GetParameters
from rclpy.parameter import parameter_value_to_python
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

from qt_ros.common.settings import parameter_table
from qt_ros.data.images import image_to_numpy
from qt_ros.episodes.recorder_config import NOT_PARAMETERS, RecorderNodeConfig
from qt_ros.msg import EpisodeEvent
from qt_ros.sim.node_configs import DemonstratorNodeConfig, SimRobotNodeConfig
from qt_ros.sim.simulator import JOINT_NAMES, STATE_NAMES, TASKS, SimState
from qt_ros.srv import StartEpisode

from conftest import python_args, wait_for

pytestmark = pytest.mark.ros
RATE = 10.0


def sim_args(**params) -> list[str]:
    args = python_args("-m", "qt_ros.nodes.sim_robot_node", "--ros-args")
    for name, value in {"control_rate": RATE, "image_width": 96, "image_height": 80,
                        **params}.items():
        args += ["-p", f"{name}:={value}"]
    return args


def alive_wait(proc, predicate, timeout, what):
    def check():
        assert proc.alive(), f"{what}: the node died:\n{proc.output()[-3000:]}"
        return predicate()
    return wait_for(check, timeout, what=what)


def check_declared(probe, node: str, cls: type, overridden: dict, skip=()) -> None:
    """``node`` declares every field of ``cls`` as a parameter, with the field's description,
    and its value is the field's default unless ``overridden`` on the command line."""
    table = parameter_table(cls, skip=skip)
    names = list(table)
    described = probe.call(DescribeParameters, f"/{node}/describe_parameters",
                           DescribeParameters.Request(names=names))
    assert [d.description for d in described.descriptors] == [table[n][1] for n in names]
    got = probe.call(GetParameters, f"/{node}/get_parameters", GetParameters.Request(names=names))
    values = dict(zip(names, (parameter_value_to_python(v) for v in got.values), strict=True))
    assert values == {n: overridden.get(n, table[n][0]) for n in names}


def latest_state(states) -> SimState:
    return SimState.from_vector(messages(states)[-1].data)


def test_commands_move_the_robot_and_it_publishes_image_state_success(spawn, env, probe):
    images = probe.collect(Image, "image", SENSOR)
    joints = probe.collect(JointState, "joint_states", SENSOR)
    states = probe.collect(Float64MultiArray, "/sim_robot/state")
    success = probe.collect(Bool, "task_success")
    instruction = probe.collect(String, "instruction", EVENTS)
    arm = probe.publisher(TwistStamped, "arm_command", RELIABLE)
    gripper = probe.publisher(Float64, "gripper_command", RELIABLE)
    sim = spawn(sim_args(seed=5), env=env, name="sim")
    alive_wait(sim, lambda: len(images) >= 3 and len(states) >= 3 and joints and success,
               60, "images, states, joint states and the success flag")
    alive_wait(sim, lambda: arm.get_subscription_count() and
               gripper.get_subscription_count(), 10, "the command subscriptions")

    frame = image_to_numpy(messages(images)[-1])
    assert frame.shape == (80, 96, 3) and frame.dtype == np.uint8 and frame.std() > 5
    assert messages(images)[-1].encoding == "rgb8"
    js = messages(joints)[-1]
    assert list(js.name) == list(JOINT_NAMES) and len(js.position) == len(JOINT_NAMES)
    assert len(messages(states)[-1].data) == len(STATE_NAMES)
    assert messages(instruction)[-1].data == TASKS["lift"]
    assert messages(success)[-1].data is False

    # The rate: about one image and one state per control period.
    t0, n0 = time.monotonic(), len(states)
    time.sleep(2.0)
    rate = (len(states) - n0) / (time.monotonic() - t0)
    assert 0.6 * RATE < rate < 1.3 * RATE, rate

    # A twist of 0.1 m/s along +x for 1 s moves the end-effector ~0.1 m (0.01 m per step).
    before = latest_state(states).ee
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        cmd = TwistStamped()
        cmd.twist.linear.x = 0.1
        arm.publish(cmd)
        time.sleep(0.05)
    arm.publish(TwistStamped())  # hold
    time.sleep(0.5)
    moved = latest_state(states).ee - before
    assert 0.07 < moved[0] < 0.13 and abs(moved[1]) < 0.01 and abs(moved[2]) < 0.01, moved

    # Without fresh commands (command_timeout) the robot stays where it is.
    still = latest_state(states).ee
    time.sleep(1.0)
    assert np.allclose(latest_state(states).ee, still, atol=0.003)

    # The gripper command closes the fingers (they close fully on nothing).
    gripper.publish(Float64(data=1.0))
    alive_wait(sim, lambda: latest_state(states).finger_opening > 0.9, 5, "the fingers to close")
    closed_js = messages(joints)[-1]
    assert min(closed_js.position[3:]) > 0.02


def test_reset_draws_a_new_episode_and_is_deterministic_per_seed(spawn, env, probe):
    states = probe.collect(Float64MultiArray, "/sim_robot/state")
    sim = spawn(sim_args(seed=11), env=env, name="sim")
    alive_wait(sim, lambda: len(states) >= 2, 60, "sim states")
    first = latest_state(states)
    response = probe.call(Trigger, "/sim_robot/reset", Trigger.Request())
    assert response.success and "seed 12" in response.message, response.message
    t = time.monotonic()
    alive_wait(sim, lambda: any(when > t for when, _ in list(states)), 5, "a state after reset")
    time.sleep(0.3)
    second = latest_state(states)
    assert np.linalg.norm(second.block[:2] - first.block[:2]) > 1e-3
    assert second.time < 1.0  # simulated time restarted

    # The same seed gives the same scene in another process (here with a slower camera).
    states2 = probe.collect(Float64MultiArray, "/other/sim_robot/state")
    images2 = probe.collect(Image, "/other/image", SENSOR)
    other = spawn(sim_args(seed=11, camera_rate=4.0) + ["-r", "__ns:=/other"], env=env,
                  name="sim2")
    alive_wait(other, lambda: len(states2) >= 2 and images2, 60, "the second sim")
    again = SimState.from_vector(messages(states2)[0].data)
    assert np.allclose(again.block, first.block, atol=1e-6)
    assert np.allclose(again.goal, first.goal, atol=1e-9)
    t0, n_images, n_states = time.monotonic(), len(images2), len(states2)
    time.sleep(2.0)
    elapsed = time.monotonic() - t0
    assert 2.0 < (len(images2) - n_images) / elapsed < 5.5
    assert 0.6 * RATE < (len(states2) - n_states) / elapsed < 1.3 * RATE


def test_demonstration_is_ended_by_the_demonstrator_and_labelled_by_the_sim(
        spawn, env, probe, tmp_path):
    events = probe.collect(EpisodeEvent, "episode_events", EVENTS)
    success = probe.collect(Bool, "task_success")
    sim = spawn(sim_args(seed=3), env=env, name="sim")
    recorder = spawn(python_args("-m", "qt_ros.nodes.recorder_node", "--ros-args",
                                 "-p", f"record_dir:={tmp_path / 'demos'}",
                                 "-p", "source:=demonstration", "-p", "min_free_space_mb:=1.0"),
                     env=env, name="recorder")
    demo = spawn(python_args("-m", "qt_ros.nodes.demonstrator_node", "--ros-args",
                             "-p", f"control_rate:={RATE}"), env=env, name="demonstrator")
    alive_wait(sim, lambda: success, 60, "the sim")
    for proc, what in ((recorder, "recorder"), (demo, "demonstrator")):
        alive_wait(proc, lambda p=proc: "started" in p.output() or "recording into" in
                   p.output() or "disabled until" in p.output(), 60, what)
    # The three nodes' parameters: declared from their config dataclasses.
    check_declared(probe, "sim_robot", SimRobotNodeConfig,
                   {"control_rate": RATE, "image_width": 96, "image_height": 80, "seed": 3})
    check_declared(probe, "demonstrator", DemonstratorNodeConfig, {"control_rate": RATE})
    check_declared(probe, "recorder", RecorderNodeConfig,
                   {"record_dir": str(tmp_path / "demos"), "source": "demonstration",
                    "min_free_space_mb": 1.0}, skip=NOT_PARAMETERS)
    time.sleep(1.0)  # the latched instruction reaches the recorder
    start = probe.call(StartEpisode, "/recorder/start_episode", StartEpisode.Request(),
                       timeout=30)
    assert start.success, start.message
    assert probe.call(SetBool, "/demonstrator/enable", SetBool.Request(data=True)).success

    def labelled():
        return [e for _, e in list(events) if e.episode_id == start.episode_id
                and e.event == EpisodeEvent.LABELLED]
    label = alive_wait(sim, labelled, 30, "the episode to be ended and labelled")[0]
    assert label.outcome == "success", label
    assert label.instruction == TASKS["lift"]
    ended = [e for _, e in list(events) if e.episode_id == start.episode_id
             and e.event == EpisodeEvent.ENDED]
    assert ended and ended[0].outcome == "unknown"
    assert "demonstration 1 done" in demo.output()
