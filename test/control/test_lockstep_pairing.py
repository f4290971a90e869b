"""The control loop in lockstep (``lockstep: true``): a frame is acted on with the joint state of
its own stamp, whichever arrives first, and at most once per stamp; ``acted_header`` names the
frame the commands answer. Same fake clock, stub policy and recording output as
test_control_loop.py; off (the default) the loop ignores stamps."""

from __future__ import annotations

import numpy as np
from test_control_loop import INSTRUCTION, Rig, acted_on

JOINTS = ("ee_x", "ee_y", "ee_z", "finger_left", "finger_right")


def lockstep_rig(lockstep: bool = True) -> Rig:
    rig = Rig(lockstep=lockstep, state_source="joint_states", joint_names=JOINTS)
    rig.loop.on_instruction(INSTRUCTION)
    return rig


def frame(rig: Rig, stamp: int) -> bool:
    rgb = np.full((8, 8, 3), stamp, dtype=np.uint8)
    return rig.loop.on_frame(rgb, {"stamp": stamp}, rig.clock(), stamp=stamp)


def joints(rig: Rig, stamp: int) -> bool:
    return rig.loop.on_joint_states(JOINTS, [float(stamp)] * 5, stamp=stamp)


def states_seen(rig: Rig) -> list[float]:
    return [float(state[0]) for _, state in rig.policy.frames]


def test_a_frame_that_comes_before_its_joint_state_waits_for_it():
    rig = lockstep_rig()
    joints(rig, 1)
    frame(rig, 1)  # tick 1: joint state first, then the frame
    assert rig.loop.tick() is True
    rig.clock.advance(0.05)
    rig.loop.frame_wait()
    assert acted_on(rig) == [1] and states_seen(rig) == [1.0]

    rig.clock.advance(0.05)
    assert rig.loop.tick() is True
    assert frame(rig, 2) is False  # tick 2: the frame first; the state of tick 1 is not its own
    rig.clock.advance(0.05)
    rig.loop.frame_wait()
    assert acted_on(rig) == [1]
    assert joints(rig, 2) is True  # its state runs the step
    assert acted_on(rig) == [1, 2] and states_seen(rig) == [1.0, 2.0]
    assert rig.loop.acted_header == {"stamp": 2}
    assert [e[1].header for e in rig.output.of("step")] == [{"stamp": 1}, {"stamp": 2}]


def test_a_frame_sent_again_with_the_same_stamp_is_not_answered_twice():
    rig = lockstep_rig()
    joints(rig, 1)
    frame(rig, 1)
    rig.period(frame_delay=None)
    assert acted_on(rig) == [1]
    for _ in range(3):  # the simulator re-sends the tick it waits for
        frame(rig, 1)
        rig.period(frame_delay=None)
    assert acted_on(rig) == [1]
    joints(rig, 2)
    frame(rig, 2)
    rig.period(frame_delay=None)
    assert acted_on(rig) == [1, 2]


def test_without_lockstep_the_newest_state_is_used_whatever_its_stamp():
    rig = lockstep_rig(lockstep=False)
    joints(rig, 1)
    frame(rig, 1)
    rig.period(frame_delay=None)
    rig.loop.tick()
    frame(rig, 2)  # runs at once, with the joint state it has (of stamp 1)
    frame(rig, 2)  # the same stamp again is a new frame: used by the next tick
    rig.clock.advance(0.1)
    rig.loop.tick()
    rig.clock.advance(0.05)
    rig.loop.frame_wait()
    assert acted_on(rig) == [1, 2, 2] and states_seen(rig) == [1.0, 1.0, 1.0]
    assert rig.loop.acted_header == {"stamp": 2}
