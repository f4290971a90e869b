"""The policy node in its own process, fed by a camera process, watched from the test process.

Checkpoints are real ``tiny`` checkpoints with random weights (a few set on purpose: terminate
never / always, NaN outputs, a state projection that overflows): the node's behaviour -- rate,
limits, holds, staleness, enable, terminate, bad frames -- does not depend on trained weights.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from geometry_msgs.msg import TwistStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from policy_node_support import (
    EVENTS,
    SENSOR,
    camera_args,
    make_checkpoint,
    messages,
    policy_node_args,
)
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64
from std_srvs.srv import SetBool

from qt_ros.control.policy_config import DEFAULT_LOWER, DEFAULT_MAX_CHANGE, DEFAULT_UPPER
from qt_ros.control.safety import SafetyFilter, SafetyLimits
from qt_ros.msg import EpisodeEvent, PolicyStep
from qt_ros.srv import StartEpisode

from conftest import python_args, wait_for

pytestmark = pytest.mark.ros

PERIOD = 0.1  # control_rate 10 Hz
INSTRUCTION = "pick up the red block"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "plain": make_checkpoint(root / "plain"),
        "terminate": make_checkpoint(root / "terminate", terminate=True),
        "nan": make_checkpoint(root / "nan", nan_output=True),
        "state": make_checkpoint(root / "state", state_dim=3, state_weight=1.0),
    }


def is_hold(msg: TwistStamped) -> bool:
    t = msg.twist
    return [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z] == [0.0] * 6


def twist_values(msg: TwistStamped) -> np.ndarray:
    t = msg.twist
    return np.array([t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z])


def start_policy(spawn, env, checkpoint, name="policy", **params):
    return spawn(policy_node_args(checkpoint, **params), env=env, name=name)


def wait_alive_for(proc, predicate, timeout, what):
    def check():
        assert proc.alive(), f"the policy node died:\n{proc.output()}"
        return predicate()
    try:
        return wait_for(check, timeout=timeout, what=what)
    except pytest.fail.Exception:
        pytest.fail(f"timed out after {timeout} s waiting for {what}; node log:\n"
                    f"{proc.output()[-3000:]}")


def enable(probe, on=True):
    response = probe.call(SetBool, "/policy/enable", SetBool.Request(data=on), timeout=30)
    assert response.success, response.message
    return response


def test_commands_at_the_control_rate_within_limits_and_policy_steps_match(
        spawn, env, probe, checkpoints):
    arm = probe.collect(TwistStamped, "arm_command")
    gripper = probe.collect(Float64, "gripper_command")
    steps = probe.collect(PolicyStep, "policy_step")
    probe.instruction(INSTRUCTION)
    spawn(camera_args(30), env=env, name="camera")
    policy = start_policy(spawn, env, checkpoints["plain"], frame_id="tool0")
    # Disabled by default: frames and the instruction arrive, nothing is commanded.
    wait_alive_for(policy, lambda: "disabled" in policy.output(), 60, "the node to start")
    wait_alive_for(policy, lambda: probe.matched("arm_command", "gripper_command",
                                                 "policy_step"), 30, "the node's publishers")
    time.sleep(1.0)
    assert not arm and not steps, "commands before ~/enable"
    enable(probe)
    wait_alive_for(policy, lambda: len(steps) >= 32, 30, "32 policy steps")
    time.sleep(0.3)  # let the last command / step pairs arrive
    cmds, grips, recs = messages(arm), messages(gripper), messages(steps)
    n = min(len(cmds), len(grips), len(recs))
    assert n >= 30 and abs(len(cmds) - len(recs)) <= 1 and abs(len(grips) - len(recs)) <= 1

    # Rate: one command per control period (measured where the commands arrive).
    times = np.array([t for t, _ in list(arm)])[2:]
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 9.0 <= rate <= 11.0, f"command rate {rate:.2f} Hz, expected 10"
    assert np.median(np.diff(times)) == pytest.approx(PERIOD, abs=0.02)

    # PolicyStep == what the policy chose; the commands == the safety filter applied to it.
    limits = SafetyLimits.create(["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
                                 DEFAULT_LOWER, DEFAULT_UPPER, DEFAULT_MAX_CHANGE)
    replay = SafetyFilter(limits)
    replay.reset([0.0] * 6 + [np.nan])
    for cmd, grip, rec in zip(cmds[:n], grips[:n], recs[:n], strict=True):
        assert list(rec.dimension_names) == ["x", "y", "z", "roll", "pitch", "yaw", "gripper",
                                             "terminate"]
        assert rec.instruction == INSTRUCTION and rec.model_id and not rec.terminate
        assert len(rec.action_bins) == len(rec.q_values) == 8
        assert 0 < rec.inference_time < PERIOD
        assert rec.header.frame_id == "camera"  # stamped like the frame it acted on
        expected = replay.apply(np.asarray(rec.action)[:7]).values
        np.testing.assert_allclose(twist_values(cmd), expected[:6] / PERIOD, rtol=1e-9)
        assert grip.data == pytest.approx(expected[6])
        assert cmd.header.frame_id == "tool0"
        assert np.all(np.abs(twist_values(cmd)) <= np.array(DEFAULT_UPPER[:6]) / PERIOD + 1e-12)

    # Disable: one hold command, then silence (a command may have been in flight).
    enable(probe, False)
    time.sleep(0.6)
    holds = [is_hold(m) for m in messages(arm)]
    assert holds[-1] and holds.count(True) == 1, "expected one hold command, last"
    n_steps = len(steps)
    time.sleep(0.5)
    assert len(steps) == n_steps and len(arm) == len(holds)
    assert policy.alive()


def test_camera_stop_holds_once_then_silence_and_resume(spawn, env, probe, checkpoints):
    arm = probe.collect(TwistStamped, "arm_command")
    probe.instruction(INSTRUCTION)
    camera = spawn(camera_args(30), env=env, name="camera")
    policy = start_policy(spawn, env, checkpoints["plain"], start_enabled=True,
                          image_timeout=0.5)
    wait_alive_for(policy, lambda: len(arm) >= 10, 60, "commands")
    # The camera dies at once: its last frame left at most one frame period before the kill.
    before_kill = time.monotonic()
    camera.stop(signal.SIGKILL)
    after_kill = time.monotonic()
    time.sleep(1.5)
    after = [(t, m) for t, m in list(arm) if t > before_kill]
    holds = [t for t, m in after if is_hold(m)]
    assert len(holds) == 1 and after[-1][0] == holds[0], \
        f"expected commands, then exactly one hold, then silence; got {after}"
    # Within one control period after the timeout (plus scheduling and delivery slack).
    assert before_kill - 1 / 30 + 0.5 <= holds[0] <= after_kill + 0.5 + PERIOD + 0.1, \
        f"hold {holds[0] - before_kill:.3f} s after the camera stopped"
    out = policy.output()
    assert out.count("holding: no image for more than 0.5 s") == 1, out

    count = len(arm)
    spawn(camera_args(30), env=env, name="camera2")
    wait_alive_for(policy, lambda: len(arm) >= count + 10, 30, "commands after the camera resumed")
    assert not any(is_hold(m) for _, m in list(arm)[count:])
    assert "commanding (was: no image for more than 0.5 s)" in policy.output()


def test_non_finite_output_holds_once_then_resumes_on_fresh_input(spawn, env, probe, checkpoints):
    arm = probe.collect(TwistStamped, "arm_command")
    steps = probe.collect(PolicyStep, "policy_step")
    joints = probe.publisher(JointState, "joint_states", SENSOR)
    probe.instruction(INSTRUCTION)
    spawn(camera_args(30), env=env, name="camera")
    policy = start_policy(spawn, env, checkpoints["state"], start_enabled=True,
                          state_source="joint_states", joint_names=["j1", "j2", "j3"])
    state = {"positions": [0.1, 0.2, 0.3]}

    def publish_joints():
        msg = JointState(name=["j1", "j2", "j3"], position=state["positions"])
        joints.publish(msg)

    timer = probe.node.create_timer(1 / 50, publish_joints)
    try:
        wait_alive_for(policy, lambda: len(arm) >= 10, 60, "commands")
        # A finite but huge state overflows inside the model: NaN Q values.
        state["positions"] = [3e38, 3e38, 3e38]
        switched = time.monotonic()
        time.sleep(1.5)
        after = [(t, m) for t, m in list(arm) if t > switched]
        holds = [t for t, m in after if is_hold(m)]
        assert len(holds) == 1 and after[-1][0] == holds[0], f"got {after}"
        assert holds[0] - switched <= 2 * PERIOD + 0.15
        out = policy.output()
        assert out.count("holding: non-finite model output") == 1, out
        n_steps = len(steps)
        time.sleep(0.5)
        assert len(steps) == n_steps, "PolicySteps published for non-finite outputs"
        # Fresh, ordinary input: commands resume.
        count = len(arm)
        state["positions"] = [0.1, 0.2, 0.3]
        wait_alive_for(policy, lambda: len(arm) >= count + 5, 30, "commands after recovery")
        assert not any(is_hold(m) for _, m in list(arm)[count:])
        assert all(np.isfinite(s.q_values).all() for s in messages(steps))
    finally:
        timer.cancel()


def test_nan_checkpoint_never_commands_and_logs_once(spawn, env, probe, checkpoints):
    arm = probe.collect(TwistStamped, "arm_command")
    steps = probe.collect(PolicyStep, "policy_step")
    probe.instruction(INSTRUCTION)
    spawn(camera_args(30), env=env, name="camera")
    policy = start_policy(spawn, env, checkpoints["nan"], start_enabled=True)
    wait_alive_for(policy, lambda: "non-finite model output" in policy.output(), 60,
                   "the non-finite output to be noticed")
    time.sleep(1.5)  # ~15 more steps on fresh frames, each non-finite
    assert policy.alive()
    assert not arm and not steps
    assert policy.output().count("non-finite model output") == 1, policy.output()


def test_no_command_before_the_first_instruction_or_with_a_stale_one(
        spawn, env, probe, checkpoints):
    arm = probe.collect(TwistStamped, "arm_command")
    spawn(camera_args(30), env=env, name="camera")
    policy = start_policy(spawn, env, checkpoints["plain"], start_enabled=True,
                          instruction_timeout=1.0)
    wait_alive_for(policy, lambda: "waiting for an instruction" in policy.output(), 60,
                   "the node to wait for an instruction")
    time.sleep(1.0)
    assert not arm
    # A publisher that sends the instruction once: it expires after instruction_timeout.
    probe.instruction(INSTRUCTION)
    wait_alive_for(policy, lambda: len(arm) >= 3, 30, "commands")
    time.sleep(1.5)
    holds = [m for m in messages(arm) if is_hold(m)]
    assert len(holds) == 1 and is_hold(messages(arm)[-1])
    assert "holding: no instruction for more than 1 s" in policy.output()


@pytest.mark.parametrize("transport, defect", [("raw", "size"), ("raw", "encoding"),
                                               ("compressed", "jpeg")])
def test_malformed_frames_are_dropped_with_a_throttled_warning(
        spawn, env, probe, checkpoints, transport, defect):
    arm = probe.collect(TwistStamped, "arm_command")
    steps = probe.collect(PolicyStep, "policy_step")
    probe.instruction(INSTRUCTION)
    spawn(camera_args(30, 160, 120, "--transport", transport, "--malformed", defect), env=env,
          name="bad_camera")
    policy = start_policy(spawn, env, checkpoints["plain"], start_enabled=True,
                          image_transport=transport)
    wait_alive_for(policy, lambda: "dropped a malformed frame" in policy.output(), 60,
                   "a warning about the malformed frames")
    time.sleep(2.0)  # ~60 more bad frames
    out = policy.output()
    assert policy.alive()
    assert not arm and not steps, "a command was computed from a malformed frame"
    topic = "/image/compressed" if transport == "compressed" else "/image"
    warnings = [line for line in out.splitlines() if "dropped a malformed frame" in line]
    assert 1 <= len(warnings) <= 2, out  # throttled: one per 5 s
    assert f"topic '{topic}'" in warnings[0]
    assert {"size": "inconsistent sizes", "encoding": "unsupported image encoding",
            "jpeg": "could not decode"}[defect] in warnings[0]
    # The node still works when good frames come.
    spawn(camera_args(30, 160, 120, "--transport", transport), env=env, name="good_camera")
    wait_alive_for(policy, lambda: len(arm) >= 3, 30, "commands from good frames")


def test_lifecycle_deactivate_holds_activate_resumes_ctrl_c_holds(spawn, env, probe, checkpoints):
    arm = probe.collect(TwistStamped, "arm_command")
    probe.instruction(INSTRUCTION)
    spawn(camera_args(30), env=env, name="camera")
    policy = start_policy(spawn, env, checkpoints["plain"], start_enabled=True)
    wait_alive_for(policy, lambda: len(arm) >= 5, 60, "commands")

    def transition(transition_id):
        request = ChangeState.Request()
        request.transition.id = transition_id
        assert probe.call(ChangeState, "/policy/change_state", request).success

    transition(Transition.TRANSITION_DEACTIVATE)
    time.sleep(0.8)
    holds = [is_hold(m) for m in messages(arm)]
    assert holds[-1] and holds.count(True) == 1, f"deactivate: expected one hold, last: {holds}"
    state = probe.call(GetState, "/policy/get_state", GetState.Request())
    assert state.current_state.label == "inactive", state
    count = len(arm)
    transition(Transition.TRANSITION_ACTIVATE)
    wait_alive_for(policy, lambda: len(arm) >= count + 5, 30, "commands after activate")
    # Ctrl-C (and SIGTERM, as `ros2 launch` sends on shutdown) stops the arm before exiting.
    assert policy.stop(signal.SIGINT) == 0, policy.output()
    time.sleep(0.3)
    assert is_hold(messages(arm)[-1]), f"no hold command on Ctrl-C:\n{policy.output()[-2000:]}"


def test_bad_checkpoint_is_a_clear_message_not_a_traceback(spawn, env, tmp_path):
    policy = spawn(policy_node_args(tmp_path / "missing"), env=env, name="policy")
    wait_for(lambda: "not configured" in policy.output(), 60, what="the configure error")
    out = policy.output()
    assert "Traceback" not in out
    assert f"cannot load checkpoint '{tmp_path / 'missing'}'" in out
    assert policy.alive()  # still answers lifecycle services: fix the parameter, configure again


def test_terminate_ends_the_episode_through_the_recorder_and_holds(
        spawn, env, probe, checkpoints, tmp_path):
    arm = probe.collect(TwistStamped, "arm_command")
    steps = probe.collect(PolicyStep, "policy_step")
    events = probe.collect(EpisodeEvent, "episode_events", EVENTS)
    probe.instruction(INSTRUCTION)
    # The recorder's own end-on-terminate is off: the episode can only end by the policy's call.
    recorder = spawn(python_args("-m", "qt_ros.nodes.recorder_node", "--ros-args",
                                 "-p", f"record_dir:={tmp_path / 'episodes'}",
                                 "-p", "end_on_terminate:=false"), env=env, name="recorder")
    spawn(camera_args(30), env=env, name="camera")
    policy = start_policy(spawn, env, checkpoints["terminate"])
    wait_alive_for(policy, lambda: "disabled" in policy.output(), 60, "the policy node")
    started = probe.call(StartEpisode, "/recorder/start_episode",
                         StartEpisode.Request(instruction=INSTRUCTION), timeout=30)
    assert started.success, started.message
    wait_for(lambda: any(e.event == EpisodeEvent.STARTED for _, e in list(events)), 10,
             what="the STARTED event")
    time.sleep(0.3)  # the policy node hears the STARTED event too
    enable(probe)
    wait_alive_for(policy, lambda: any(e.event == EpisodeEvent.ENDED for _, e in list(events)),
                   30, "the episode to end")
    ended = [e for _, e in list(events) if e.event == EpisodeEvent.ENDED][0]
    assert ended.episode_id == started.episode_id
    assert ended.outcome == "unknown"  # to be labelled
    recs = messages(steps)
    assert len(recs) == 1 and recs[0].terminate and recs[0].episode_id == started.episode_id
    # Holds still: exactly one hold command, no motion, and disabled until enabled again.
    time.sleep(0.8)
    assert [is_hold(m) for m in messages(arm)] == [True]
    assert len(steps) == 1
    assert "episode ended by terminate" in policy.output()
    assert recorder.alive() and policy.alive()


def test_benchmark_prints_one_json_object(spawn, env):
    import json

    bench = spawn(python_args("-m", "qt_ros.cli", "bench", "policy-node", "--preset", "tiny",
                              "--duration", "2", "--warmup", "2", "--width", "160", "--height",
                              "120"), env=env, name="bench")
    wait_for(lambda: not bench.alive(), 120, what="the benchmark to finish")
    assert bench.popen.returncode == 0, bench.output()
    lines = [line for line in bench.output().splitlines() if line.startswith("{")]
    result = json.loads(lines[-1])
    assert result["benchmark"] == "policy-node" and result["steps"] >= 15
    assert result["latency_ms"]["p50"] > 0 and result["missed_deadlines"] >= 0
    assert result["frames_received"] > 0 and result["camera_report"]["published"] > 0


def test_benchmark_with_the_recorder_reports_what_it_recorded(spawn, env):
    import json

    bench = spawn(python_args("-m", "qt_ros.cli", "bench", "policy-node", "--preset", "tiny",
                              "--duration", "2", "--warmup", "2", "--width", "160", "--height",
                              "120", "--with-recorder"), env=env, name="bench")
    wait_for(lambda: not bench.alive(), 180, what="the benchmark to finish")
    assert bench.popen.returncode == 0, bench.output()
    lines = [line for line in bench.output().splitlines() if line.startswith("{")]
    result = json.loads(lines[-1])
    assert result["steps"] >= 15 and result["latency_ms"]["p99"] > 0
    recorder = result["recorder"]
    messages = recorder["messages"]
    # One episode over the warm-up and the measurement (~4 s): camera frames at ~30 Hz, the
    # latched instruction once, and one arm command, gripper command and step per control step.
    assert messages["/image"] >= 30 and messages["/instruction"] == 1
    assert messages["/policy_step"] >= result["steps"]
    assert messages["/arm_command"] >= result["steps"]
    assert messages["/gripper_command"] >= result["steps"]
    assert recorder["dropped"] == 0 and recorder["episode_s"] >= 4
    assert recorder["cpu_percent"] > 0 and result["cpu"]["recorder_percent"] > 0
