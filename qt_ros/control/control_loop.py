"""The policy node's control loop without ROS: when to act, on which frame, and when to hold.

:class:`ControlLoop` takes plain values (an RGB frame with its opaque header and receipt time, the
instruction text, joint positions, a pose, episode events, enable / disable), calls the policy
(any object with ``act``, ``reset``, ``model_id``, ``image_size``, ``state_dim``) and sends what
comes out through a :class:`ControlOutput` (the node turns those calls into messages). Time comes
from the ``clock`` it is given (monotonic seconds), so tests drive it with a fake clock.

Timing: the node calls :meth:`ControlLoop.tick` at the control rate. A tick acts on the first
frame received after it (the model sees the freshest observation); when none came within
``max_frame_wait`` (:meth:`ControlLoop.frame_wait`) it acts on the newest frame not yet used; a
frame that comes later still runs the pending step. A tick that finds the previous step still
pending, or a step that ends after the next tick was due, counts as a missed deadline.

Lockstep (``config.lockstep``; a simulator that waits for each decision, docs/design.md 2.6): a
stamped frame is acted on only with the state of the same stamp (waiting for it) and once per
stamp; ``acted_header`` (the frame acted on last) stamps the commands.

Safety: nothing is sent before the first valid frame and instruction, nor while disabled. A
missing or stale input (image, instruction, state), a non-finite model output (action or Q values)
or a terminate action stops the commands: one hold command, one log line, then silence until the
cause is gone (:class:`qt_ros.control.safety.CommandGate`). Terminate also publishes its step,
disables the loop and asks for the episode to end. Commands pass the safety filter first.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from qt_ros.control.policy_config import ActionLayout, PolicyConfig
from qt_ros.control.safety import CommandGate, Freshness, SafetyFilter, non_finite_dims

DISABLED = "disabled: call the ~/enable service (std_srvs/SetBool) to start"
WARNING_PERIOD = 5.0  # s between two warnings of one kind (the others are counted)


@dataclass(frozen=True)
class StepRecord:
    """One control step, as published on ``policy_step``."""

    header: Any  # the header of the frame acted on, given back untouched
    episode_id: str
    instruction: str
    names: tuple[str, ...]  # the checkpoint's action dimensions
    bins: np.ndarray  # int [d]
    action: np.ndarray  # float [d]
    q_values: np.ndarray  # float [d]
    terminate: bool
    latency: float  # s, frame receipt -> commands published
    model_id: str


class ControlOutput(Protocol):
    """Where the loop's decisions go (the node: messages and its logger)."""

    def command(self, arm: np.ndarray, gripper: float | None,
                joints: np.ndarray | None) -> None:
        """Send filtered arm values (and the gripper value); ``joints``: the measured joint
        positions when the node uses joint_states. Raises ValueError if no command can be
        built from them."""

    def hold(self, joints: np.ndarray | None) -> None:
        """Send the command that stops the arm (and holds the gripper)."""

    def step(self, record: StepRecord) -> None:
        """Publish a control step."""

    def end_episode(self, episode_id: str) -> None:
        """Ask the recorder to end the episode (outcome unknown)."""

    def info(self, text: str) -> None:
        """A log line about a normal change (instruction, enabled, commanding again)."""

    def warning(self, text: str) -> None:
        """A log line about a stop, a fault or dropped input."""


@dataclass
class ControlStats:
    """Counters and timings (seconds) of a control loop; the benchmark reads them."""

    frames_received: int = 0
    frames_dropped: int = 0
    frames_rejected: Counter = field(default_factory=Counter)  # reason -> malformed frames
    steps: int = 0
    holds: int = 0
    missed_deadlines: int = 0
    latency: deque = field(default_factory=lambda: deque(maxlen=100_000))  # receipt -> publish
    model_time: deque = field(default_factory=lambda: deque(maxlen=100_000))  # policy.act
    # header stamp -> receipt (wall clocks; meaningful when the camera runs on this machine)
    transport: deque = field(default_factory=lambda: deque(maxlen=100_000))

    def summary(self) -> str | None:
        """One line for the log, or None before the first step."""
        if not self.latency:
            return None
        lat = np.array(self.latency) * 1e3
        return (f"{self.steps} steps, {self.holds} holds, {self.missed_deadlines} missed "
                f"deadlines, {self.frames_dropped}/{self.frames_received} frames dropped; "
                f"image-to-command latency p50 {np.percentile(lat, 50):.1f} ms, "
                f"p99 {np.percentile(lat, 99):.1f} ms")

    def rejections(self) -> str | None:
        """One log line of the malformed frames dropped, per reason (None when none were)."""
        reasons = ", ".join(f"{k} {n}" for k, n in sorted(self.frames_rejected.items()))
        return (f"rejected {self.frames_rejected.total()} of {self.frames_received} frames "
                f"received: {reasons}") if reasons else None


@dataclass(frozen=True)
class _Frame:
    rgb: np.ndarray  # H x W x 3 uint8
    received: float  # clock() at receipt
    header: Any
    seq: int
    stamp: int | None = None  # header stamp (ns), for lockstep


class ControlLoop:
    """Control steps of one configured policy (see the module docstring).

    Attributes:
        config, layout, policy: what it was built with.
        stats: counters and timings since the start or the last :meth:`reset_stats`.
        enabled: commands may be sent (``~/enable``); terminate clears it.
        active: the loop runs (lifecycle active); frames are ignored otherwise.
        acted_header: the header of the frame acted on last (None before the first step).
    """

    def __init__(self, config: PolicyConfig, layout: ActionLayout, policy: Any,
                 output: ControlOutput, *, clock: Callable[[], float] = time.monotonic,
                 enabled: bool = False):
        self.config, self.layout, self.policy = config, layout, policy
        self.stats = ControlStats()
        self.enabled = enabled
        self.active = False
        self._output = output
        self._clock = clock
        self._index = np.asarray(layout.index, dtype=np.int64)
        self._safety = SafetyFilter(config.limits())
        self._gate = CommandGate()
        self._throttle: dict[str, tuple[float, int]] = {}
        self._fresh = Freshness()
        self._fresh.watch("image", config.image_timeout, "waiting for the first valid image")
        self._fresh.watch("instruction", config.instruction_timeout, "waiting for an instruction")
        if config.uses_joint_states:
            self._fresh.watch("joint_states", config.state_timeout, "waiting for joint_states")
        if config.state_source == "pose":
            self._fresh.watch("pose", config.state_timeout, "waiting for a pose")
        self._frame: _Frame | None = None
        self._frame_seq = 0
        self._used_seq = 0
        self._pending: float | None = None  # tick time of the step waiting for a frame
        self._instruction: str | None = None
        self._joints: np.ndarray | None = None
        self._pose: np.ndarray | None = None
        self._episode_id = ""
        self.acted_header: Any = None
        self._state_stamps: dict[str, int | None] = {}  # lockstep: source -> stamp (ns)
        if config.lockstep and config.uses_joint_states:
            self._state_stamps["joint_states"] = None
        if config.lockstep and config.state_source == "pose":
            self._state_stamps["pose"] = None
        self._answered_stamp: int | None = None  # lockstep: the frame stamp acted on last

    # ------------------------------------------------------------------ lifecycle and enable

    def activate(self) -> None:
        """Start (again): fresh frame history and rate limiter."""
        self._restart()
        self.active = True

    def deactivate(self, reason: str) -> None:
        """Stop commanding (one hold if moving) and stop acting until :meth:`activate`."""
        self._stop(reason)
        self.active = False

    def set_enabled(self, on: bool) -> None:
        """``~/enable``: enabling restarts the history and rate limiter; disabling holds."""
        if on and not self.enabled:
            self.enabled = True
            self._restart()
            self._output.info("enabled")
        elif not on and self.enabled:
            self.enabled = False
            if self.active:
                self._stop("disabled by ~/enable")

    def reset_stats(self) -> ControlStats:
        """Start new statistics; return the ones kept so far."""
        stats, self.stats = self.stats, ControlStats()
        return stats

    # ------------------------------------------------------------------ inputs

    def on_frame(self, rgb: np.ndarray, header: Any, received: float,
                 transport: float | None = None, stamp: int | None = None) -> bool:
        """A valid frame (H x W x 3 uint8) received at ``received`` (clock time); ``transport``:
        seconds from its stamp to its receipt, for the statistics; ``stamp``: its header stamp in
        ns (lockstep pairs it with the state of that stamp). Runs a pending step: returns True
        when it did (the tick's frame wait is then over)."""
        if not self.active:
            return False
        self._count_frame(transport)
        self._frame_seq += 1
        self._frame = _Frame(rgb, received, header, self._frame_seq, stamp)
        self._fresh.mark("image", received)
        return self._run_pending()

    def on_bad_frame(self, error: str, transport: float | None = None,
                     reason: str = "invalid") -> None:
        """A malformed frame: counted under ``reason``, a throttled warning; it does not count
        as an image for staleness, so only malformed frames end in a hold as no frames do."""
        if not self.active:
            return
        self._count_frame(transport)
        self.stats.frames_dropped += 1
        self.stats.frames_rejected[reason] += 1
        self.warn_throttled("image", f"dropped a malformed frame: {error}")

    def on_instruction(self, text: str) -> None:
        """A new instruction; an empty one stops the commands until a non-empty one comes."""
        text = text.strip()
        if not text:
            self._output.warning("empty instruction received: not commanding until a "
                                 "non-empty one arrives")
            self._instruction = None
            self._fresh.clear("instruction")
            return
        self._fresh.mark("instruction", self._clock())
        if text != self._instruction:
            self._instruction = text
            self.policy.reset(text)
            self._output.info(f"instruction: '{text}'")

    def on_joint_states(self, names: Sequence[str], positions: Sequence[float],
                        stamp: int | None = None) -> bool:
        """A joint_states message: the positions of ``config.joint_names`` are kept (ignored
        when the configuration needs no joint positions). ``stamp``: its header stamp (ns); in
        lockstep the state of the waiting frame's stamp runs the pending step (returns True)."""
        if not self.config.uses_joint_states:
            return False
        index = {name: i for i, name in enumerate(names)}
        missing = [j for j in self.config.joint_names if j not in index]
        if missing or len(positions) != len(names):
            self.warn_throttled("joint_states", f"dropped joint_states: joints {missing} "
                                f"missing or positions/names of different lengths")
            return False
        joints = np.array([positions[index[j]] for j in self.config.joint_names])
        if not np.isfinite(joints).all():
            self.warn_throttled("joint_states", "dropped joint_states with non-finite positions")
            return False
        self._joints = joints
        self._fresh.mark("joint_states", self._clock())
        return self._state_arrived("joint_states", stamp)

    def on_pose(self, pose: Sequence[float], stamp: int | None = None) -> bool:
        """An end-effector pose: x y z, then the quaternion x y z w (ignored unless
        ``state_source`` is pose); ``stamp`` as for :meth:`on_joint_states`."""
        if self.config.state_source != "pose":
            return False
        pose = np.asarray(pose, dtype=np.float64)
        if not np.isfinite(pose).all():
            self.warn_throttled("pose", "dropped a pose with non-finite values")
            return False
        self._pose = pose
        self._fresh.mark("pose", self._clock())
        return self._state_arrived("pose", stamp)

    def episode_started(self, episode_id: str) -> None:
        """The recorder started an episode: the following steps belong to it."""
        self._episode_id = episode_id

    def episode_ended(self, episode_id: str) -> None:
        """The recorder ended an episode (only the current one clears the id)."""
        if episode_id == self._episode_id:
            self._episode_id = ""

    # ------------------------------------------------------------------ timing

    def tick(self) -> bool:
        """A control tick. Returns True when the step waits for a frame: call
        :meth:`frame_wait` after ``config.max_frame_wait`` seconds."""
        now = self._clock()
        if self._pending is not None:  # no step at all in the last period
            self._missed_deadline("no new valid frame within the control period")
        self._pending = None
        reason = self._blocker(now)
        if reason is not None:
            self._stop(reason)
            return False
        self._pending = now
        if self.config.max_frame_wait > 0:
            return True
        self.frame_wait()
        return False

    def frame_wait(self) -> None:
        """``max_frame_wait`` after a tick: act on the newest unused frame, if any."""
        self._run_pending()
        # Otherwise the next valid frame runs the step (late, maybe still before the deadline).

    def warn_throttled(self, key: str, text: str, period: float = WARNING_PERIOD) -> None:
        """A warning, at most one per ``period`` per ``key`` (the others are counted)."""
        now = self._clock()
        last, suppressed = self._throttle.get(key, (-math.inf, 0))
        if now - last < period:
            self._throttle[key] = (last, suppressed + 1)
            return
        more = f" ({suppressed} more like this in the last {period:g} s)" if suppressed else ""
        self._output.warning(text + more)
        self._throttle[key] = (now, 0)

    # ------------------------------------------------------------------ control

    def _blocker(self, now: float) -> str | None:
        """Why the loop may not command at this tick, or None."""
        if not self.enabled:
            return DISABLED
        problems = self._fresh.problems(now)
        return problems[0] if problems else None

    def _run_pending(self) -> bool:
        """Run the pending step on the newest frame if it is unused (and, in lockstep, for a
        stamped frame: paired with its state and not yet answered); returns whether it ran."""
        frame = self._frame
        if self._pending is None or frame is None or frame.seq == self._used_seq:
            return False
        if self.config.lockstep and frame.stamp is not None and (
                frame.stamp == self._answered_stamp
                or any(s != frame.stamp for s in self._state_stamps.values())):
            return False
        self._step(frame)
        return True

    def _state_arrived(self, source: str, stamp: int | None) -> bool:
        if source not in self._state_stamps:
            return False
        self._state_stamps[source] = stamp
        return self._run_pending()

    def _step(self, frame: _Frame) -> None:
        tick, self._pending = self._pending, None
        self._used_seq = frame.seq
        self._answered_stamp, self.acted_header = frame.stamp, frame.header
        start = self._clock()
        try:
            result = self.policy.act(frame.rgb, self._state())
        except Exception as e:  # noqa: BLE001 - a model error must stop the arm, not the node
            self._stop(f"the policy failed on a frame: {type(e).__name__}: {e}", fault=True)
            return
        model_time = self._clock() - start
        bad = non_finite_dims(self.layout.names, result.action, result.q_values)
        if bad:
            self._stop(f"non-finite model output in {', '.join(bad)}; waiting for fresh input",
                       fault=True)
            return
        if result.terminate:
            self._terminate(frame, result)
            return
        values = np.asarray(result.action, dtype=np.float64)[self._index]
        filtered = self._safety.apply(values).values
        n = self.layout.num_arm
        gripper = float(filtered[n]) if self.layout.gripper_range is not None else None
        try:
            self._output.command(filtered[:n], gripper, self._measured_joints())
        except ValueError as e:
            self._stop(f"cannot build the arm command: {e}", fault=True)
            return
        latency = self._clock() - frame.received
        self._output.step(self._record(frame, result, latency))
        self.stats.steps += 1
        self.stats.latency.append(latency)
        self.stats.model_time.append(model_time)
        if tick is not None and self._clock() - tick > self.config.period:
            self._missed_deadline("the step finished after the next tick was due")
        change = self._gate.commanded()
        if change.log:
            self._output.info(change.log)

    def _terminate(self, frame: _Frame, result: Any) -> None:
        """The policy chose to end the episode: its step, one hold, disabled, episode ended."""
        self._output.step(self._record(frame, result, self._clock() - frame.received))
        self._stop("the policy chose to terminate: call ~/enable to start the next episode",
                   force_hold=True)
        self.enabled = False
        if self.config.end_episode_on_terminate:
            self._output.end_episode(self._episode_id)

    def _stop(self, reason: str, force_hold: bool = False, fault: bool = False) -> None:
        """Stop commanding: one hold command if the arm may be moving, one log line (a
        warning when it stops motion or for a fault, else info)."""
        self._pending = None
        change = self._gate.block(reason)
        if change.hold or force_hold:
            self._hold()
        if change.log and (change.hold or force_hold or fault):
            self._output.warning(change.log)
        elif change.log:
            self._output.info(change.log)

    def _hold(self) -> None:
        self._output.hold(self._measured_joints())
        self.stats.holds += 1
        # The next command starts from rest for the arm, from the last command for the gripper.
        previous = self._safety.previous
        rest = self._arm_rest()
        self._safety.reset(np.concatenate([rest, previous[len(rest):]]))

    def _restart(self) -> None:
        if self._instruction is not None:
            self.policy.reset(self._instruction)
        rest = self._arm_rest()
        self._safety.reset(np.concatenate([rest, [np.nan] * (len(self._index) - len(rest))]))
        self._pending = None

    def _arm_rest(self) -> np.ndarray:
        """The arm values that mean "stay still": zero for deltas and velocities, the measured
        position for absolute position targets (NaN while unknown: then the first target is
        not rate limited)."""
        n = self.layout.num_arm
        if self.config.arm_action == "delta" or self.config.arm_velocity:
            return np.zeros(n)
        measured = self._measured_joints()
        return np.full(n, np.nan) if measured is None else measured.astype(np.float64)

    def _measured_joints(self) -> np.ndarray | None:
        return self._joints if self.config.uses_joint_states else None

    def _state(self) -> np.ndarray | None:
        if self.config.state_source == "joint_states":
            return self._joints.astype(np.float32)
        if self.config.state_source == "pose":
            return self._pose.astype(np.float32)
        return None

    def _record(self, frame: _Frame, result: Any, latency: float) -> StepRecord:
        return StepRecord(header=frame.header, episode_id=self._episode_id,
                          instruction=self._instruction or "", names=self.layout.names,
                          bins=result.bins, action=result.action, q_values=result.q_values,
                          terminate=bool(result.terminate), latency=latency,
                          model_id=str(self.policy.model_id))

    def _missed_deadline(self, why: str) -> None:
        self.stats.missed_deadlines += 1
        self.warn_throttled("deadline", f"missed a control deadline: {why}")

    def _count_frame(self, transport: float | None) -> None:
        self.stats.frames_received += 1
        if transport is not None:
            self.stats.transport.append(transport)
