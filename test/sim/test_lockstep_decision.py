"""Which commands answer the simulator's latest tick in lockstep (qt_ros.sim.lockstep.Decision):
stamps decide for the arm command, the arm command next to it for the gripper command."""

from __future__ import annotations

import numpy as np
import pytest

from qt_ros.sim.lockstep import Decision
from qt_ros.sim.node_configs import SimRobotNodeConfig

UP = np.array([0.0, 0.0, 0.1])


def test_arm_then_gripper_answering_the_tick_complete_the_decision():
    d = Decision()
    d.open(100)
    assert not d.complete
    assert d.on_arm(100, UP) and not d.complete  # the policy: the frame's own stamp
    assert d.on_gripper(1.0) and d.complete
    assert np.array_equal(d.velocity, UP) and d.gripper == 1.0
    d.open(200)  # the next tick forgets the last decision
    assert not d.complete and d.velocity is None and d.gripper is None


def test_a_gripper_command_that_arrives_first_joins_the_next_arm_command():
    d = Decision()
    d.open(100)
    assert not d.begun
    assert d.on_gripper(0.0) and not d.complete and d.begun
    assert d.on_arm(150, UP) and d.complete and d.gripper == 0.0  # a later stamp answers too


def test_late_commands_answer_an_earlier_tick_and_are_dropped_with_their_gripper():
    d = Decision()
    d.open(200)
    assert not d.on_arm(100, UP)  # stamped with an earlier tick: late
    assert not d.on_gripper(1.0)  # the gripper command of that late decision
    assert not d.complete and d.late == 2
    assert d.on_gripper(0.0)  # the next gripper command is the next decision's again
    assert d.on_arm(200, -UP) and d.complete and d.gripper == 0.0
    assert np.array_equal(d.velocity, -UP)


def test_without_the_gripper_the_arm_command_alone_decides():
    d = Decision(with_gripper=False)
    d.open(100)
    assert d.on_arm(100, UP) and d.complete and d.gripper is None


def test_nothing_answers_before_the_first_tick():
    d = Decision()
    assert not d.on_arm(100, UP) and not d.on_gripper(1.0) and not d.complete


def test_lockstep_needs_one_image_per_tick_and_a_positive_resend_period():
    assert SimRobotNodeConfig(lockstep=True).lockstep
    with pytest.raises(ValueError, match="set camera_rate to 0"):
        SimRobotNodeConfig(lockstep=True, camera_rate=4.0)
    with pytest.raises(ValueError, match="lockstep_resend"):
        SimRobotNodeConfig(lockstep=True, lockstep_resend=0.0)
