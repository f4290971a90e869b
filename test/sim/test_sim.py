"""The simulated tabletop robot and the scripted demonstrator (no ROS).

One simulator per module (building the scene and its OpenGL context costs ~0.1 s); every test
starts from ``reset(seed)``, which makes the scene a pure function of the seed.
"""

from __future__ import annotations

import numpy as np
import pytest

from qt_ros.qtransformer.tokenizer import ActionTokenizer
from qt_ros.sim.demonstrator import MISTAKES, DemonstratorConfig, ScriptedDemonstrator
from qt_ros.sim.simulator import (
    BLOCK_HALF,
    JOINT_NAMES,
    STATE_NAMES,
    TASKS,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    SimConfig,
    SimState,
    TabletopSim,
    run_episode,
)

HOLD_OPEN = [0, 0, 0, 0, 0, 0, 0.0]


@pytest.fixture(scope="module")
def sim():
    s = TabletopSim(SimConfig(image_width=96, image_height=80))
    yield s
    s.close()


@pytest.fixture(scope="module")
def place_sim():
    s = TabletopSim(SimConfig(task="place"))
    yield s
    s.close()


def go_to(sim: TabletopSim, target, steps: int = 15) -> SimState:
    """Move the end-effector to ``target`` (gripper open) and let it settle."""
    for _ in range(steps):
        state = sim.step([*np.clip(np.asarray(target) - sim.ee_position(), -0.05, 0.05),
                          0, 0, 0, 0])
    return state


def demonstrate(sim: TabletopSim, seed: int, **config) -> tuple:
    demo = ScriptedDemonstrator(sim.config, DemonstratorConfig(**config))
    demo.reset(seed)
    return run_episode(sim, demo.act, seed, max_steps=80), demo


def test_same_seed_same_scene_and_trajectory_other_seed_other_scene(sim):
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.02, 0.02, size=(15, 7))
    actions[:, 6] = rng.integers(0, 2, size=15)
    runs = []
    for _ in range(2):
        start = sim.reset(42)
        states = [sim.step(a).to_vector() for a in actions]
        runs.append((start.to_vector(), np.stack(states), sim.render()))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert np.array_equal(runs[0][1], runs[1][1])
    assert np.array_equal(runs[0][2], runs[1][2])
    other = sim.reset(43)
    assert np.linalg.norm(other.block[:2] - runs[0][0][5:7]) > 1e-3
    # the scene is drawn within the configured ranges, the pad clear of the block
    for seed in range(20):
        s = sim.reset(seed)
        assert np.all(np.abs(s.block[:2]) <= sim.config.block_range)
        assert np.linalg.norm(s.goal - s.block[:2]) >= 0.09
        assert s.block[2] == pytest.approx(BLOCK_HALF, abs=1e-3)  # resting on the table
        assert not s.success and not s.grasped and s.gripper_command == 0.0


def test_actions_move_the_end_effector_as_commanded(sim):
    sim.reset(1)
    start = go_to(sim, [-0.05, 0.05, 0.08]).ee
    for _ in range(10):
        state = sim.step([0.01, -0.005, 0.004, 0, 0, 0, 0])
    moved = state.ee - start
    np.testing.assert_allclose(moved, [0.1, -0.05, 0.04], atol=0.006)
    # settles at the target when the commands stop
    for _ in range(3):
        state = sim.step(HOLD_OPEN)
    np.testing.assert_allclose(state.ee - start, [0.1, -0.05, 0.04], atol=0.002)
    # roll, pitch and yaw are ignored; terminate (index 7) too
    a = sim.reset(2)
    b = sim.step([0.01, 0, 0, 0.2, -0.2, 0.2, 0, 1])
    sim.reset(2)
    c = sim.step([0.01, 0, 0, 0, 0, 0, 0])
    assert a.time == 0.0 and np.array_equal(b.to_vector(), c.to_vector())


def test_deltas_are_clipped_and_the_workspace_bounded(sim):
    start = sim.reset(3).ee
    state = sim.step([0.3, 0, 0, 0, 0, 0, 0])  # beyond the tokenizer's 0.05 m
    assert state.ee[0] - start[0] <= 0.05 + 1e-6
    for _ in range(15):
        state = sim.step([0.05, 0.05, 0.05, 0, 0, 0, 0])
    np.testing.assert_allclose(state.ee, WORKSPACE_HIGH, atol=0.003)
    for _ in range(15):
        state = sim.step([-0.05, -0.05, -0.05, 0, 0, 0, 0])
    np.testing.assert_allclose(state.ee, WORKSPACE_LOW, atol=0.003)


def test_gripper_closes_and_opens(sim):
    sim.reset(4)
    assert sim.step([0, 0, 0, 0, 0, 0, 1.0]).finger_opening > 0.9  # nothing between the fingers
    assert sim.step(HOLD_OPEN).finger_opening < 0.1
    with pytest.raises(ValueError, match="7 finite values"):
        sim.step([0.0, 0.0, np.nan, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="7 finite values"):
        sim.step([0.0, 0.0])


def test_render_shape_and_content(sim):
    sim.reset(5)
    frame = sim.render()
    assert frame.shape == (80, 96, 3) and frame.dtype == np.uint8
    red = (frame[..., 0] > 150) & (frame[..., 1] < 80) & (frame[..., 2] < 80)
    green = (frame[..., 1] > 150) & (frame[..., 0] < 100) & (frame[..., 2] < 120)
    assert red.sum() >= 10, "the block is not in view"
    assert green.sum() >= 10, "the goal pad is not in view"
    # the picture changes when the robot moves
    for _ in range(5):
        sim.step([0.02, 0.02, 0, 0, 0, 0, 0])
    assert np.abs(sim.render().astype(int) - frame.astype(int)).mean() > 0.5


def test_lift_success_detector(sim):
    result, _ = demonstrate(sim, 6)
    assert result.terminated and result.success and sim.success()
    last = sim.state()
    assert last.grasped and last.block[2] - BLOCK_HALF >= sim.config.lift_height
    # opening the gripper drops the block: no longer a success
    for _ in range(8):
        state = sim.step(HOLD_OPEN)
    assert not state.success and state.block[2] < BLOCK_HALF + 0.005
    # a block lifted without being held (set there by hand) is not a success either
    sim.reset(6)
    q = sim.model.joint("block").qposadr[0]
    sim.data.qpos[q + 2] = 0.2
    sim._mj.mj_forward(sim.model, sim.data)
    assert not sim.success()


def test_place_success_detector(place_sim):
    sim = place_sim
    s = sim.reset(7)
    q = sim.model.joint("block").qposadr[0]
    sim.data.qpos[q:q + 2] = s.goal  # the block on the pad, the gripper away and open
    sim._mj.mj_forward(sim.model, sim.data)
    assert sim.step(HOLD_OPEN).success
    sim.data.qpos[q:q + 2] = s.goal + [0.05, 0.0]  # beside the pad
    sim._mj.mj_forward(sim.model, sim.data)
    assert not sim.step(HOLD_OPEN).success


@pytest.mark.parametrize("task, seeds, max_mean_length", [("lift", 20, 25), ("place", 8, 45)])
def test_scripted_demonstrator_succeeds_without_noise(task, seeds, max_mean_length, sim,
                                                      place_sim):
    s = sim if task == "lift" else place_sim
    results = [demonstrate(s, seed)[0] for seed in range(seeds)]
    wins = sum(r.success for r in results)
    assert wins >= 0.9 * seeds, [(r.seed, r.success, r.length) for r in results]
    assert all(r.terminated == r.success for r in results)  # it terminates when done
    assert np.mean([r.length for r in results]) <= max_mean_length


def test_demonstrator_actions_fit_the_default_tokenizer(sim):
    tok = ActionTokenizer()
    result, _ = demonstrate(sim, 8, noise=0.003)
    actions = np.stack(result.actions)
    assert actions.shape[1] == tok.num_dims == 8
    _, clipped = tok.encode_with_report(actions)
    assert not clipped.any()
    assert np.abs(actions[:, :3]).max() <= 0.02 + 1e-9  # max_step
    assert np.all(actions[:, 3:6] == 0)
    assert set(np.unique(actions[:, 6])) <= {0.0, 1.0}
    assert actions[-1, 7] == 1.0 and np.all(actions[:-1, 7] == 0.0)  # terminate only last
    # quantized deltas: multiples of 5 mm
    np.testing.assert_allclose(actions[:, :3] / 0.005, np.round(actions[:, :3] / 0.005),
                               atol=1e-9)


def test_noise_and_mistakes_make_failures(sim):
    noisy = [demonstrate(sim, seed, noise=0.003)[0].success for seed in range(10)]
    assert sum(noisy) >= 8  # noise alone: the closed loop still mostly succeeds
    mistaken = [demonstrate(sim, seed, failure_rate=1.0) for seed in range(12)]
    assert all(demo.mistake in MISTAKES for _, demo in mistaken)
    assert sum(r.success for r, _ in mistaken) <= 2
    assert all(r.terminated for r, _ in mistaken)  # failures end by themselves, not by timeout
    assert {demo.mistake for _, demo in mistaken} == set(MISTAKES)
    # the mistake is drawn from the seed: reproducible
    again = [demonstrate(sim, seed, failure_rate=0.5)[1].mistake for seed in range(12)]
    assert again == [demonstrate(sim, seed, failure_rate=0.5)[1].mistake for seed in range(12)]


def test_state_vector_round_trip_and_names(sim):
    state = sim.reset(9)
    vector = state.to_vector()
    assert vector.shape == (len(STATE_NAMES),)
    back = SimState.from_vector(vector)
    assert np.array_equal(back.to_vector(), vector)
    with pytest.raises(ValueError, match="sim state vector"):
        SimState.from_vector(vector[:-1])
    assert sim.joint_positions().shape == (len(JOINT_NAMES),)
    np.testing.assert_allclose(sim.joint_positions()[:3], state.ee)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown sim task 'stack'"):
        SimConfig(task="stack")
    with pytest.raises(ValueError, match="at least 8x8"):
        SimConfig(image_width=4)
    with pytest.raises(ValueError, match="failure_rate"):
        DemonstratorConfig(failure_rate=2.0)
    assert set(TASKS) == {"lift", "place"}
