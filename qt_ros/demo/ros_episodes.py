"""The demo's policy episodes through ROS 2: the simulated robot (``sim_robot_node``), the
policy node with a checkpoint and the recorder, each in its own process, in lockstep
(``config/sim.yaml``), driven episode by episode by an in-process operator node.

Each episode: reset the simulator to a new scene, start a recording, enable the policy; it ends
when the policy terminates or after ``max_steps`` decisions (counted from the policy's
``policy_step`` messages, so the budget does not depend on the machine's load), and the
simulator's success detector labels it. Every episode is one labelled MCAP bag.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import yaml

from qt_ros.common.files import shipped_config
from qt_ros.demo.child_processes import REPO, DemoError, Processes


def node_environment(out: Path, domain_id: int) -> dict[str, str]:
    """The environment of the demo's child processes: its own ROS domain (the demo never talks
    to other ROS graphs), localhost discovery, offscreen rendering, no network for models."""
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1",
               ROS_LOG_DIR=str(out / "logs" / "ros"))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    profile = shipped_config("fastdds_shm.xml")
    if profile is not None:
        env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def write_sim_params(path: Path, task: str, image_size: int) -> Path:
    """``config/sim.yaml`` with the demo's task and the camera at the data's image size: the
    nodes and ``qt-ros eval --params`` then see the scenes the training data was rendered as."""
    data = yaml.safe_load(shipped_config("sim.yaml").read_text())
    robot = data["sim_robot"]["ros__parameters"]
    robot.update(task=task, image_width=image_size, image_height=image_size)
    data["demonstrator"]["ros__parameters"]["task"] = task
    path.write_text("# written by python -m qt_ros.demo: config/sim.yaml, the demo's task and "
                    "camera size\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def _step_budget_driver(domain_id: int, max_steps: int):
    """An :class:`~qt_ros.nodes.episode_driver.EpisodeDriver` whose episodes end after
    ``max_steps`` decisions of the policy (its ``policy_step`` messages), not after a wall
    time: in lockstep the simulator waits for the policy, so on a busy machine a wall-time
    budget would cut episodes short."""
    from qt_ros.msg import EpisodeEvent, PolicyStep
    from qt_ros.nodes.episode_driver import EpisodeDriver
    from qt_ros.nodes.qos import POLICY_STEP_QOS

    class StepBudgetDriver(EpisodeDriver):
        def __init__(self) -> None:
            super().__init__(domain_id)
            self.steps: Counter[str] = Counter()
            self.cut: set[str] = set()
            self.node.create_subscription(PolicyStep, "policy_step", self._on_step,
                                          POLICY_STEP_QOS)

        def _on_step(self, msg) -> None:
            if msg.episode_id:
                self.steps[msg.episode_id] += 1

        def _wait_event(self, episode_id: str, kind: int, timeout: float):
            # Only the wait for the policy's terminate is cut at the step budget; the driver's
            # later wait for the end it asks for then waits as usual.
            if kind != EpisodeEvent.ENDED or episode_id in self.cut:
                return super()._wait_event(episode_id, kind, timeout)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                event = self._find(episode_id, kind)
                if event is not None:
                    return event
                if self.steps[episode_id] >= max_steps:
                    self.cut.add(episode_id)
                    return None
                time.sleep(0.01)
            return None

    return StepBudgetDriver()


class RosPolicyEpisodes:
    """Starts the three nodes, runs ``count`` policy episodes, stops the nodes."""

    def __init__(self, procs: Processes, domain_id: int, params_file: Path,
                 say: Callable[[str], None]):
        self.procs = procs
        self.domain_id = domain_id
        self.params_file = str(params_file)
        self.say = say

    def _node(self, name: str, module: str, *params: str, files: tuple[str, ...] = ()) -> None:
        args = [sys.executable, "-m", f"qt_ros.nodes.{module}", "--ros-args"]
        for f in (*files, self.params_file):
            args += ["--params-file", f]
        for p in params:
            args += ["-p", p]
        self.procs.start(name, args)

    def run(self, checkpoint: Path, record_dir: Path, seed: int, count: int,
            max_steps: int) -> list[dict]:
        """``count`` episodes from scene seed ``seed`` on; one row per episode (outcome,
        ended_by, seconds, bag, scene)."""
        self._node("sim_robot", "sim_robot_node", f"seed:={seed}")
        self._node("recorder", "recorder_node", f"record_dir:={record_dir}",
                   "source:=autonomous", "min_free_space_mb:=200.0",
                   files=(str(shipped_config("recorder.yaml")),))
        self._node("policy", "policy_node", f"checkpoint:={checkpoint}",
                   files=(str(shipped_config("policy.yaml")),))
        try:
            return self._episodes(count, max_steps)
        finally:
            self.procs.stop_all()

    def _episodes(self, count: int, max_steps: int) -> list[dict]:
        from qt_ros.nodes.episode_driver import DriverError

        rows: list[dict] = []
        # Lockstep runs at most at the control rate (10 Hz); the wall-time limit only guards
        # against a node that stopped answering.
        timeout = max_steps * 0.1 * 4 + 10
        with _step_budget_driver(self.domain_id, max_steps) as driver:
            try:
                self._wait_ready(driver)
                for k in range(count):
                    result = asdict(driver.run_episode("policy", timeout))
                    result["steps"] = driver.steps[result["episode_id"]]
                    self.procs.check()
                    rows.append(result)
                    wins = sum(r["outcome"] == "success" for r in rows)
                    self.say(f"policy episode {k + 1:3d}/{count}: {result['outcome']:8s} "
                             f"{result['steps']:3d} steps {result['seconds']:5.1f} s, ended by "
                             f"{result['ended_by']:10s} ({result['scene'].split(':')[0]}; "
                             f"{wins}/{k + 1} successes)")
            except DriverError as exc:
                self.procs.check()
                raise DemoError(str(exc)) from exc
        return rows

    def _wait_ready(self, driver) -> None:
        from std_srvs.srv import SetBool, Trigger

        from qt_ros.srv import StartEpisode

        alive = self.procs.check
        driver.wait_for_service(Trigger, "sim_robot/reset", 90, alive)
        driver.wait_for_service(StartEpisode, "recorder/start_episode", 90, alive)
        self.say("loading the policy node (torch, checkpoint, instruction encoder)...")
        driver.wait_active("policy", 180, alive)
        driver.wait_for_service(SetBool, "policy/enable", 90, alive)
        time.sleep(1.0)  # the latched instruction reaches the recorder and the policy
