"""Lockstep simulation through ROS: an episode is a function of the seed and the commander only.

Real processes: ``sim_robot_node`` with the shipped ``config/sim.yaml`` settings (lockstep on),
driven by the policy node (a real ``tiny`` checkpoint with random weights that never terminates,
acting on the joint state of each frame's own stamp) or by the scripted demonstrator. A probe
watches ``sim_robot/state`` (the full privileged state, simulated time included).

- The same seed and checkpoint give the identical trajectory in two runs, and again while other
  processes keep both cores busy.
- The demonstrator through ROS runs the same episodes, step for step, as the in-process
  ``run_episode`` of the same seeds, answering each state once, and succeeds where it does.
- Without a decision the simulator does not advance: it re-sends the tick it waits for.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import yaml
from geometry_msgs.msg import TwistStamped
from policy_node_support import make_checkpoint, messages
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from qt_ros.sim.demonstrator import ScriptedDemonstrator
from qt_ros.sim.node_configs import DemonstratorNodeConfig, SimRobotNodeConfig
from qt_ros.sim.simulator import JOINT_NAMES, SimState, TabletopSim, run_episode

from conftest import REPO, python_args, wait_for

pytestmark = pytest.mark.ros
SHIPPED = yaml.safe_load((REPO / "config" / "sim.yaml").read_text())
SIZE = {"image_width": 64, "image_height": 64}  # small frames: fast renders and model steps
STEPS = 25


def ros_args(module: str, node: str, namespace: str = "/", **overrides) -> list[str]:
    """``module`` with the shipped sim.yaml section of ``node`` and ``overrides`` as -p."""
    params = {**SHIPPED[node]["ros__parameters"], **overrides}
    args = python_args("-m", f"qt_ros.nodes.{module}", "--ros-args", "-r", f"__ns:={namespace}")
    for name, value in params.items():
        args += ["-p", f"{name}:={_ros_value(value)}"]
    return args


def _ros_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_ros_value(v) for v in value) + "]"
    return str(value)


def distinct(received: list) -> list[np.ndarray]:
    """The state vectors in order, a re-sent tick (the same vector again) once."""
    out: list[np.ndarray] = []
    for msg in messages(received):
        v = np.array(msg.data)
        if not out or not np.array_equal(out[-1], v):
            out.append(v)
    return out


def alive_wait(procs, predicate, timeout, what):
    def check():
        for p in procs:
            assert p.alive(), f"{what}: a node died:\n{p.output()[-3000:]}"
        return predicate()
    return wait_for(check, timeout, what=what)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("lockstep") / "ckpt",
                           state_dim=len(JOINT_NAMES), seed=3)


def policy_run(spawn, env, probe, checkpoint, run: str) -> list[np.ndarray]:
    """The first STEPS + 1 states of seed 7 under the random policy, in namespace /run."""
    states = probe.collect(Float64MultiArray, f"/{run}/sim_robot/state")
    sim = spawn(ros_args("sim_robot_node", "sim_robot", f"/{run}", seed=7, **SIZE), env=env,
                name=f"sim_{run}")
    alive_wait((sim,), lambda: states, 60, f"tick 0, sent again until answered ({run})")
    policy = spawn(ros_args("policy_node", "policy", f"/{run}", checkpoint=checkpoint,
                            start_enabled=True, **SIZE), env=env, name=f"policy_{run}")
    alive_wait((sim, policy), lambda: len(distinct(states)) > STEPS, 120,
               f"{STEPS} lockstep steps ({run})")
    policy.stop()
    sim.stop()
    return distinct(states)[:STEPS + 1]


def test_same_seed_and_policy_give_the_same_trajectory_even_under_load(spawn, env, probe,
                                                                        checkpoint):
    first = policy_run(spawn, env, probe, checkpoint, "a")
    times = [SimState.from_vector(v).time for v in first]
    assert times == pytest.approx([0.1 * k for k in range(STEPS + 1)])  # one period per step
    moved = np.linalg.norm(SimState.from_vector(first[-1]).ee - SimState.from_vector(first[0]).ee)
    assert moved > 0.005, "the random policy did not move the arm: the test would prove nothing"

    second = policy_run(spawn, env, probe, checkpoint, "b")
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))

    burners = [spawn(python_args("-c", "while True: pass"), env=env, name=f"burn{i}")
               for i in range(3)]
    loaded = policy_run(spawn, env, probe, checkpoint, "c")
    assert all(b.alive() for b in burners)
    for b in burners:
        b.stop()
    assert all(np.array_equal(a, b) for a, b in zip(first, loaded, strict=True))


def test_the_demonstrator_through_ros_runs_the_in_process_episodes(spawn, env, probe):
    states = probe.collect(Float64MultiArray, "/sim_robot/state")
    twists = probe.collect(TwistStamped, "/arm_command")
    sim_params = {**SHIPPED["sim_robot"]["ros__parameters"], "seed": 20, **SIZE}
    demo_params = {**SHIPPED["demonstrator"]["ros__parameters"], "seed": 5,
                   "failure_rate": 0.0, "end_episode_on_terminate": False}
    sim = spawn(ros_args("sim_robot_node", "sim_robot", seed=20, **SIZE), env=env, name="sim")
    demo = spawn(ros_args("demonstrator_node", "demonstrator", seed=5, failure_rate=0.0,
                          end_episode_on_terminate=False), env=env, name="demonstrator")
    procs = (sim, demo)
    alive_wait(procs, lambda: states and "disabled until" in demo.output(), 60, "the nodes")

    sim_config = SimRobotNodeConfig(**sim_params)
    demo_config = DemonstratorNodeConfig(**demo_params)
    in_process = TabletopSim(sim_config.sim_config())
    script = ScriptedDemonstrator(demo_config.sim_config(), demo_config.demonstrator_config())
    try:
        for k in range(3):
            reset = probe.call(Trigger, "/sim_robot/reset", Trigger.Request())
            seed = int(re.search(r"seed (\d+)", reset.message).group(1))
            assert seed == 21 + k, reset.message
            if k == 0:  # nothing answers: the tick is sent again, the simulation waits
                since = time.monotonic()
                time.sleep(1.2)
                waiting = messages(states, since)
                assert len(waiting) >= 2
                assert all(np.array_equal(m.data, waiting[0].data) for m in waiting)
                assert SimState.from_vector(waiting[0].data).time == 0.0
            arm_before = len(twists)
            assert probe.call(SetBool, "/demonstrator/enable", SetBool.Request(data=True)).success
            alive_wait(procs, lambda k=k: f"demonstration {k + 1} done" in demo.output(), 60,
                       f"demonstration {k + 1}")
            time.sleep(0.3)  # the last state reaches the probe
            vectors = distinct(states)
            start = max(i for i, v in enumerate(vectors) if SimState.from_vector(v).time == 0.0)
            through_ros = vectors[start:]

            script.reset(5 + k)
            expected = run_episode(in_process, script.act, seed, max_steps=200)
            assert expected.terminated
            n = len(expected.states)
            # Every state answered once (the last with the terminate's hold), then one hold step.
            assert len(twists) - arm_before == n
            assert len(through_ros) == n + 1
            for got, want in zip(through_ros[:n], expected.states, strict=True):
                np.testing.assert_allclose(got, want.to_vector(), atol=1e-6)
            assert SimState.from_vector(through_ros[n - 1]).success == expected.success
            assert expected.success, f"seed {seed}: the scripted demonstrator failed in-process"
    finally:
        in_process.close()
