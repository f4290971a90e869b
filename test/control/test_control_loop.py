"""The policy node's control loop without ROS: a fake clock, a stub policy, a recording output.

The stub stands in for ``Policy.act`` (these are tests of the loop around it); its "model time"
advances the fake clock, so deadlines and latencies are exact. The ROS tests in
test/nodes/test_policy_node.py run the same loop inside the node against a real checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from qt_ros.control.control_loop import DISABLED, ControlLoop, ControlStats
from qt_ros.control.policy_config import DEFAULT_MAX_CHANGE, DEFAULT_UPPER, PolicyConfig
from qt_ros.control.safety import SafetyFilter

NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper", "terminate")
TOKENIZER = SimpleNamespace(names=list(NAMES), low=[-0.05] * 6 + [0.0, 0.0],
                            high=[0.05] * 6 + [1.0, 1.0], terminate="terminate")
INSTRUCTION = "pick up the red block"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Result:
    action: np.ndarray
    bins: np.ndarray
    q_values: np.ndarray
    terminate: bool = False


@dataclass
class StubPolicy:
    """``act`` returns ``action`` (or what ``next`` holds) and takes ``model_time`` seconds."""

    clock: Clock
    action: list = field(default_factory=lambda: [0.002, -0.003, 0.0, 0.01, 0.0, 0.0, 1.0, 0.0])
    model_time: float = 0.01
    model_id: str = "stub@0"
    image_size: tuple = (8, 8)
    state_dim: int = 0
    next: list = field(default_factory=list)  # Result or Exception, used before ``action``
    frames: list = field(default_factory=list)  # (frame id, state) of each call
    resets: list = field(default_factory=list)

    def reset(self, instruction: str) -> None:
        self.resets.append(instruction)

    def act(self, frame, state=None):
        self.clock.advance(self.model_time)
        self.frames.append((int(frame[0, 0, 0]), None if state is None else state.copy()))
        if self.next:
            item = self.next.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        return result(self.action)


def result(action, q=0.5, terminate=False) -> Result:
    action = np.asarray(action, dtype=np.float64)
    return Result(action, np.arange(len(action)), np.full(len(action), q), terminate)


class Output:
    """Records what the loop sends, in order: ("command", arm, gripper), ("hold",), ("step",
    record), ("end_episode", id), ("info"/"warning", text)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.fail_command: str | None = None
        self.joints_seen: list = []

    def command(self, arm, gripper, joints):
        if self.fail_command:
            raise ValueError(self.fail_command)
        self.joints_seen.append(joints)
        self.events.append(("command", np.array(arm), gripper))

    def hold(self, joints):
        self.events.append(("hold",))

    def step(self, record):
        self.events.append(("step", record))

    def end_episode(self, episode_id):
        self.events.append(("end_episode", episode_id))

    def info(self, text):
        self.events.append(("info", text))

    def warning(self, text):
        self.events.append(("warning", text))

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]

    def of(self, kind: str) -> list:
        return [e for e in self.events if e[0] == kind]

    def texts(self, kind: str) -> list[str]:
        return [e[1] for e in self.of(kind)]

    def clear(self) -> None:
        self.events.clear()


class Rig:
    """A loop with its clock, policy and output; frames are numbered by their first pixel."""

    def __init__(self, enabled=True, activate=True, **params):
        self.clock = Clock()
        self.config = PolicyConfig(**params)
        self.policy = StubPolicy(self.clock, state_dim=_state_dim(self.config))
        self.output = Output()
        self.loop = ControlLoop(self.config, self.config.resolve(TOKENIZER, self.policy.state_dim),
                                self.policy, self.output, clock=self.clock, enabled=enabled)
        self.frame_id = 0
        if activate:
            self.loop.activate()

    def frame(self, dt: float = 0.0) -> int:
        """A new frame ``dt`` seconds from now; returns its id."""
        self.clock.advance(dt)
        self.frame_id += 1
        rgb = np.full((8, 8, 3), self.frame_id, dtype=np.uint8)
        self.loop.on_frame(rgb, {"frame": self.frame_id}, self.clock(), transport=0.001)
        return self.frame_id

    def period(self, frame_delay: float | None = 0.01) -> None:
        """One control period: a tick, a frame ``frame_delay`` s later (None: no frame), the
        frame wait, then the rest of the period."""
        start = self.clock()
        waiting = self.loop.tick()
        if frame_delay is not None and frame_delay < self.config.max_frame_wait:
            self.frame(frame_delay)
        if waiting:
            self.clock.t = max(self.clock(), start + self.config.max_frame_wait)
            self.loop.frame_wait()
        if frame_delay is not None and frame_delay >= self.config.max_frame_wait:
            self.frame(start + frame_delay - self.clock())
        self.clock.t = max(self.clock(), start + self.config.period)

    def ready(self) -> Rig:
        """Instruction and a first frame in: the next tick commands."""
        self.loop.on_instruction(INSTRUCTION)
        self.frame()
        return self


def _state_dim(config: PolicyConfig) -> int:
    return {"none": 0, "joint_states": len(config.joint_names), "pose": 7}[config.state_source]


def acted_on(rig: Rig) -> list[int]:
    return [frame for frame, _ in rig.policy.frames]


# ------------------------------------------------------------------ timing and frame choice

def test_each_tick_commands_once_on_the_first_frame_after_it():
    rig = Rig().ready()
    rig.output.clear()
    for _ in range(5):
        rig.period(frame_delay=0.01)
    assert rig.output.kinds().count("command") == 5
    assert rig.output.kinds().count("step") == 5
    # Each step acted on the frame that came 10 ms after its tick, not the older one.
    assert acted_on(rig) == [2, 3, 4, 5, 6]
    steps = [e[1] for e in rig.output.of("step")]
    assert [s.header for s in steps] == [{"frame": i} for i in range(2, 7)]
    assert all(s.latency == pytest.approx(0.01) for s in steps)  # the stub's model time
    assert steps[0].instruction == INSTRUCTION and steps[0].names == NAMES
    assert steps[0].model_id == "stub@0" and not steps[0].terminate
    assert rig.loop.stats.steps == 5 and rig.loop.stats.missed_deadlines == 0
    assert rig.loop.stats.frames_received == 6 and len(rig.loop.stats.transport) == 6
    assert list(rig.loop.stats.model_time) == pytest.approx([0.01] * 5)


def test_without_a_new_frame_the_tick_uses_the_newest_unused_one_after_max_frame_wait():
    rig = Rig(max_frame_wait=0.03).ready()
    rig.frame(0.02)  # frame 2, newer than frame 1, before the tick
    assert rig.loop.tick() is True
    rig.clock.advance(0.029)
    assert not rig.output.of("command")  # still waiting
    rig.clock.advance(0.001)
    rig.loop.frame_wait()
    assert acted_on(rig) == [2]
    assert len(rig.output.of("command")) == 1


def test_a_used_frame_is_never_used_twice_and_a_late_frame_still_runs_the_step():
    rig = Rig().ready()
    rig.period(frame_delay=None)  # frame 1 is unused: used after the wait
    assert acted_on(rig) == [1]
    start = rig.clock()
    rig.loop.tick()
    rig.clock.advance(0.05)
    rig.loop.frame_wait()  # nothing new: no step
    assert acted_on(rig) == [1]
    rig.frame(0.03)  # 80 ms after the tick: the pending step runs on it
    assert acted_on(rig) == [1, 2]
    step = rig.output.of("step")[-1][1]
    assert rig.clock() - start == pytest.approx(0.09) and step.latency == pytest.approx(0.01)
    assert rig.loop.stats.missed_deadlines == 0


def test_a_tick_that_finds_the_step_still_pending_is_a_missed_deadline():
    rig = Rig().ready()
    rig.period(frame_delay=None)  # uses frame 1
    rig.period(frame_delay=None)  # nothing new: pending until the next tick
    rig.period(frame_delay=0.01)
    assert rig.loop.stats.missed_deadlines == 1
    assert rig.output.texts("warning") == [
        "missed a control deadline: no new valid frame within the control period"]
    assert acted_on(rig) == [1, 2]


def test_a_step_that_ends_after_the_next_tick_was_due_is_a_missed_deadline():
    rig = Rig().ready()
    rig.policy.model_time = 0.12
    rig.period(frame_delay=0.01)
    assert rig.loop.stats.steps == 1 and rig.loop.stats.missed_deadlines == 1
    assert rig.output.texts("warning") == [
        "missed a control deadline: the step finished after the next tick was due"]


def test_max_frame_wait_zero_acts_at_the_tick_on_the_newest_unused_frame():
    rig = Rig(max_frame_wait=0.0).ready()
    assert rig.loop.tick() is False
    assert acted_on(rig) == [1]


# ------------------------------------------------------------------ safety

def test_commands_pass_the_limits_and_the_rate_limit_from_rest():
    rig = Rig().ready()
    rig.policy.action = [0.05, -0.05, 0.004, 0.05, -0.05, 0.0, 1.0, 0.0]
    rig.output.clear()
    for _ in range(3):
        rig.period()
    arms = [e[1] for e in rig.output.of("command")]
    grippers = [e[2] for e in rig.output.of("command")]
    # Step 1 ramps up from rest (0) by max_change, step 2 reaches the limits.
    np.testing.assert_allclose(arms[0], [0.005, -0.005, 0.004, 0.025, -0.025, 0.0])
    np.testing.assert_allclose(arms[1], [0.01, -0.01, 0.004, 0.05, -0.05, 0.0])
    np.testing.assert_allclose(arms[2], arms[1])
    assert grippers == [1.0, 1.0, 1.0]  # unknown previous gripper: no rate limit
    assert np.all(np.abs(np.array(arms)) <= np.array(DEFAULT_UPPER[:6]) + 1e-12)
    # The step record holds what the policy chose, before the filter.
    assert rig.output.of("step")[0][1].action[0] == 0.05


def test_after_a_hold_the_arm_ramps_up_from_rest_again():
    rig = Rig().ready()
    rig.policy.action = [0.05] * 6 + [1.0, 0.0]
    rig.period()
    rig.period()
    rig.loop.set_enabled(False)
    rig.loop.set_enabled(True)
    rig.output.clear()
    rig.period()
    np.testing.assert_allclose(rig.output.of("command")[0][1], DEFAULT_MAX_CHANGE[:6])


# ------------------------------------------------------------------ holds and staleness

def test_disabled_loop_sends_nothing_and_says_why_once():
    rig = Rig(enabled=False).ready()
    for _ in range(5):
        rig.period()
    assert rig.output.kinds() == ["info", "info"]
    assert rig.output.texts("info") == [f"instruction: '{INSTRUCTION}'",
                                        f"not commanding: {DISABLED}"]
    assert rig.policy.frames == [] and rig.loop.stats.holds == 0


def test_no_command_before_the_first_frame_and_instruction():
    rig = Rig()
    rig.period(frame_delay=None)
    rig.frame()
    rig.period(frame_delay=None)
    assert rig.output.texts("info") == ["not commanding: waiting for the first valid image",
                                        "not commanding: waiting for an instruction"]
    assert not rig.output.of("command") and not rig.output.of("hold")


@pytest.mark.parametrize("stale, params, text", [
    ("image", {"image_timeout": 0.5}, "no image for more than 0.5 s"),
    ("instruction", {"instruction_timeout": 1.0}, "no instruction for more than 1 s"),
    ("joint_states", {"state_source": "joint_states", "joint_names": ["j1", "j2"]},
     "no joint_states for more than 0.5 s"),
    ("pose", {"state_source": "pose"}, "no pose for more than 0.5 s"),
])
def test_a_stale_input_holds_exactly_once_then_silence_then_resumes(stale, params, text):
    rig = Rig(**params)
    inputs = {
        "instruction": lambda: rig.loop.on_instruction(INSTRUCTION),
        "joint_states": lambda: rig.loop.on_joint_states(["j2", "j1", "j0"], [0.2, 0.1, 9.0]),
        "pose": lambda: rig.loop.on_pose([0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 1.0]),
    }
    fresh = {name: feed for name, feed in inputs.items() if name != stale}

    def period(with_stale: bool):
        for feed in fresh.values():
            feed()
        if with_stale and stale in inputs:
            inputs[stale]()
        rig.period(frame_delay=0.01 if with_stale or stale != "image" else None)

    rig.frame()  # the first tick finds a frame
    for _ in range(3):
        period(with_stale=True)
    assert rig.output.kinds().count("command") == 3
    rig.output.clear()
    for _ in range(20):  # 2 s without the stale input
        period(with_stale=False)
    assert rig.output.kinds()[-2:] == ["hold", "warning"]
    holding = [t for t in rig.output.texts("warning") if not t.startswith("missed a control")]
    assert rig.output.kinds().count("hold") == 1 and holding == [f"holding: {text}"]
    holds_at = rig.output.kinds().index("hold")
    assert "command" not in rig.output.kinds()[holds_at:]
    rig.output.clear()
    rig.frame()  # a frame before the tick: a stale image is fresh again at the tick
    period(with_stale=True)
    assert rig.output.kinds().count("command") == 1
    assert rig.output.texts("info")[-1] == f"commanding (was: {text})"


def test_state_comes_from_the_named_joints_in_order():
    rig = Rig(state_source="joint_states", joint_names=["j1", "j2"])
    rig.loop.on_joint_states(["j2", "j1", "j0"], [0.2, 0.1, 9.0])
    rig.ready()
    rig.period()
    np.testing.assert_allclose(rig.policy.frames[0][1], [0.1, 0.2])
    assert rig.policy.frames[0][1].dtype == np.float32
    np.testing.assert_allclose(rig.output.joints_seen[0], [0.1, 0.2])


def test_bad_joint_states_and_poses_are_dropped_with_throttled_warnings():
    rig = Rig(state_source="joint_states", joint_names=["j1", "j2"])
    rig.loop.on_joint_states(["j1"], [0.1])
    rig.loop.on_joint_states(["j1", "j2"], [0.1, float("nan")])
    rig.clock.advance(5.0)
    rig.loop.on_joint_states(["j1", "j2"], [0.1])
    assert rig.output.texts("warning") == [
        "dropped joint_states: joints ['j2'] missing or positions/names of different lengths",
        "dropped joint_states: joints [] missing or positions/names of different lengths "
        "(1 more like this in the last 5 s)"]
    rig.ready()
    rig.period()
    assert rig.output.texts("info")[-1] == "not commanding: waiting for joint_states"
    pose = Rig(state_source="pose")
    pose.loop.on_pose([0.0, 0.0, float("inf"), 0, 0, 0, 1])
    assert pose.output.texts("warning") == ["dropped a pose with non-finite values"]


def test_non_finite_output_holds_once_and_resumes_on_fresh_input():
    rig = Rig().ready()
    rig.period()
    rig.period()
    nan_q = result([0.0] * 8, q=np.inf)  # a NaN action in x would say "in x"
    rig.policy.next = [nan_q] * 4
    rig.output.clear()
    for _ in range(4):
        rig.period()
    assert rig.output.kinds() == ["hold", "warning"]
    assert rig.output.texts("warning")[0] == (
        f"holding: non-finite model output in {', '.join(NAMES)}; waiting for fresh input")
    assert rig.loop.stats.holds == 1 and not rig.output.of("step")
    rig.period()  # a fresh frame, a finite output
    assert rig.output.kinds()[-3:] == ["command", "step", "info"]
    assert rig.output.texts("info")[-1].startswith("commanding (was: non-finite model output")


def test_a_policy_exception_or_an_unbuildable_command_stops_with_a_warning():
    rig = Rig().ready()
    rig.period()
    rig.policy.next = [RuntimeError("CUDA error")]
    rig.period()
    assert rig.output.kinds()[-2:] == ["hold", "warning"]
    assert rig.output.texts("warning")[-1] == (
        "holding: the policy failed on a frame: RuntimeError: CUDA error")
    rig.output.fail_command = "no joint positions measured yet (joint_states)"
    rig.period()
    assert rig.output.texts("warning")[-1] == (
        "not commanding: cannot build the arm command: no joint positions measured yet "
        "(joint_states)")
    assert not rig.output.of("step")[1:]  # nothing published for the failed steps


def test_terminate_publishes_the_step_holds_disables_and_ends_the_episode():
    rig = Rig().ready()
    rig.loop.episode_started("ep1")
    rig.period()
    rig.policy.next = [result([0.0] * 7 + [1.0], terminate=True)]
    rig.output.clear()
    rig.period()
    assert rig.output.kinds() == ["step", "hold", "warning", "end_episode"]
    assert rig.output.events[0][1].terminate and rig.output.events[0][1].episode_id == "ep1"
    assert rig.output.events[3] == ("end_episode", "ep1")
    assert rig.output.texts("warning") == ["holding: the policy chose to terminate: call "
                                           "~/enable to start the next episode"]
    assert not rig.loop.enabled
    rig.output.clear()
    for _ in range(5):
        rig.period()
    assert rig.output.kinds() == ["info"]  # "not commanding: disabled ...", no second hold


def test_terminate_at_the_first_step_still_sends_one_hold():
    rig = Rig().ready()
    rig.policy.next = [result([0.0] * 7 + [1.0], terminate=True)]
    rig.output.clear()
    rig.period()
    assert rig.output.kinds() == ["step", "hold", "warning", "end_episode"]
    assert rig.output.events[3] == ("end_episode", "")  # no STARTED heard: the running one


def test_terminate_without_end_episode_on_terminate_and_episode_ids():
    rig = Rig(end_episode_on_terminate=False).ready()
    rig.loop.episode_started("ep1")
    rig.loop.episode_ended("other")
    rig.period()
    assert rig.output.of("step")[-1][1].episode_id == "ep1"
    rig.loop.episode_ended("ep1")
    rig.policy.next = [result([0.0] * 8, terminate=True)]
    rig.period()
    assert rig.output.of("step")[-1][1].episode_id == ""
    assert not rig.output.of("end_episode") and rig.output.kinds().count("hold") == 1


def test_disable_and_deactivate_hold_once_and_frames_are_ignored_while_inactive():
    rig = Rig().ready()
    rig.period()
    rig.loop.set_enabled(False)
    rig.loop.set_enabled(False)
    assert rig.output.kinds()[-2:] == ["hold", "warning"]
    assert rig.output.texts("warning") == ["holding: disabled by ~/enable"]
    rig.loop.set_enabled(True)
    assert rig.output.texts("info")[-1] == "enabled"
    assert rig.policy.resets[-1] == INSTRUCTION  # a fresh frame history
    rig.period()
    rig.loop.deactivate("deactivated")
    assert rig.output.kinds()[-2:] == ["hold", "warning"] and not rig.loop.active
    received = rig.loop.stats.frames_received
    rig.frame()
    rig.loop.on_bad_frame("broken")
    assert rig.loop.stats.frames_received == received


def test_instruction_changes_reset_the_policy_and_an_empty_one_stops():
    rig = Rig().ready()
    rig.loop.on_instruction("  " + INSTRUCTION + " ")
    assert rig.policy.resets == [INSTRUCTION]  # the same text again: no reset
    rig.period()
    rig.loop.on_instruction("")
    rig.period()
    assert rig.output.texts("warning") == [
        "empty instruction received: not commanding until a non-empty one arrives",
        "holding: waiting for an instruction"]
    rig.loop.on_instruction("open the drawer")
    rig.period()
    assert rig.policy.resets[-1] == "open the drawer"
    assert rig.output.of("step")[-1][1].instruction == "open the drawer"


def test_malformed_frames_are_counted_and_warned_about_once_per_5_s():
    rig = Rig().ready()
    for _ in range(3):
        rig.loop.on_bad_frame("could not decode", transport=0.002)
        rig.clock.advance(1.0)
    rig.clock.advance(3.0)
    rig.loop.on_bad_frame("could not decode")
    assert rig.output.texts("warning") == [
        "dropped a malformed frame: could not decode",
        "dropped a malformed frame: could not decode (2 more like this in the last 5 s)"]
    assert rig.loop.stats.frames_dropped == 4 and rig.loop.stats.frames_received == 5



def test_malformed_frames_are_counted_per_reason_for_the_statistics_line():
    rig = Rig().ready()
    assert rig.loop.stats.rejections() is None
    for reason in ["nan", "corrupt", "nan", "resolution"]:
        rig.loop.on_bad_frame("bad", reason=reason)
    assert rig.loop.stats.frames_rejected == {"nan": 2, "corrupt": 1, "resolution": 1}
    assert rig.loop.stats.rejections() == ("rejected 4 of 5 frames received: corrupt 1, nan 2, "
                                           "resolution 1")


@pytest.mark.parametrize("feed", ["nothing", "malformed frames"])
def test_only_malformed_frames_hold_once_exactly_as_no_frames(feed):
    rig = Rig(image_timeout=0.5).ready()
    for _ in range(3):
        rig.period()
    assert rig.output.kinds().count("command") == 3
    rig.output.clear()
    for _ in range(20):  # 2 s of malformed frames (or none) at 30 Hz
        rig.period(frame_delay=None)
        if feed != "nothing":
            for _ in range(3):
                rig.loop.on_bad_frame("frame has 64 NaN values", reason="nan")
    kinds = rig.output.kinds()
    assert kinds.count("hold") == 1 and "command" not in kinds and len(rig.policy.frames) == 3
    assert "holding: no image for more than 0.5 s" in rig.output.texts("warning")


def test_absolute_position_targets_rate_limit_from_the_measured_position():
    rig = Rig(arm_adapter="float64_array", arm_action="absolute", joint_names=list("abcdef"),
              state_source="joint_states", lower_limits=[-1] * 6 + [0], upper_limits=[1] * 7,
              max_change_per_step=[0.1] * 7)
    rig.policy.action = [0.5] * 6 + [0.0, 0.0]
    rig.loop.on_joint_states(list("abcdef"), [0.2] * 6)
    rig.loop.activate()  # the rest (rate limiter start) is the measured position
    rig.ready()
    rig.period()
    np.testing.assert_allclose(rig.output.of("command")[0][1], [0.3] * 6)


def test_stats_reset_and_summary():
    rig = Rig().ready()
    assert rig.loop.stats.summary() is None
    rig.period()
    rig.period()
    text = rig.loop.stats.summary()
    assert text.startswith("2 steps, 0 holds, 0 missed deadlines, 0/3 frames dropped; "
                           "image-to-command latency p50 10.0 ms")
    old = rig.loop.reset_stats()
    assert old.steps == 2 and rig.loop.stats == ControlStats()


def test_the_loop_filter_matches_a_replay_of_the_step_records():
    """What the node tests check on the wire, here exactly: commands == filter(step actions)."""
    rig = Rig().ready()
    rng = np.random.default_rng(0)
    rig.policy.next = [result(np.r_[rng.uniform(-0.05, 0.05, 6), rng.uniform(0, 1), 0.0])
                       for _ in range(20)]
    for _ in range(20):
        rig.period()
    replay = SafetyFilter(rig.config.limits())
    replay.reset([0.0] * 6 + [np.nan])
    for (_, arm, gripper), (_, rec) in zip(rig.output.of("command"), rig.output.of("step"),
                                           strict=True):
        expected = replay.apply(rec.action[:7]).values
        np.testing.assert_allclose(arm, expected[:6])
        assert gripper == pytest.approx(expected[6])
