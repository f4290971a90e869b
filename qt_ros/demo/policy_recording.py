"""More of the policy's own episodes for the demo's second round, recorded fast, in-process.

The ROS phase records the policy through the nodes at the control rate (~10 steps/s); the
second round wants more of the policy's successes and failures than that gives in a few
minutes. Here the checkpoint acts through the policy node's acting code (loader, control loop,
safety filter: :mod:`qt_ros.evaluation.closed_loop_eval`, lockstep) on the simulator, and every
episode is written, as ``qt-ros sim collect`` writes the demonstrator's
(:class:`~qt_ros.sim.collection.EpisodeCollector`: the nodes' topics, types and stamps), into a
bag labelled by the success detector, with source ``autonomous``. ``qt-ros convert`` reads them
with the mapping :func:`autonomous_mapping` (the commands as actions).

    python -m qt_ros.demo.policy_recording CHECKPOINT RECORD_DIR --params sim_params.yaml \
        --seeds 20000 20001 ...
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from qt_ros.sim.collection import EpisodeCollector, demonstration_mapping


def autonomous_mapping() -> str:
    """The topic mapping of these bags: the demonstrator's, with source ``autonomous``."""
    return demonstration_mapping().replace("source: demonstration", "source: autonomous")


class PolicyEpisodeRecorder(EpisodeCollector):
    """One simulator, the checkpoint behind the node's control loop, one recorder."""

    def __init__(self, checkpoint: str, record_dir: str, task: str, image_size: int,
                 params: str, max_steps: int):
        from qt_ros.control.policy_config import load_policy
        from qt_ros.evaluation.closed_loop_eval import FakeClock
        from qt_ros.evaluation.eval_config import EvalConfig, resolve_setup
        from qt_ros.evaluation.sim_output import SimOutput
        from qt_ros.sim.collect_config import CollectConfig

        super().__init__(CollectConfig(out=record_dir, task=task, image_size=str(image_size),
                                       max_steps=max_steps))
        self.recorder.config = dataclasses.replace(self.recorder.config, source="autonomous")
        self.setup = resolve_setup(EvalConfig(checkpoint=checkpoint, task=task,
                                              max_steps=max_steps, params=params))
        self.policy, self.layout = load_policy(self.setup.policy)
        self.output = SimOutput(self.setup.policy, self.layout, self.period)
        self.clock = FakeClock()
        self.ticks = 0

    def record(self, seed: int) -> tuple[str, str, int]:
        """Record the policy's episode on scene ``seed``; (episode id, outcome, decisions)."""
        from qt_ros.control.control_loop import ControlLoop
        from qt_ros.sim.simulator import JOINT_NAMES

        state = self.sim.reset(seed)
        self.output.begin()
        loop = ControlLoop(self.setup.policy, self.layout, self.policy, self.output,
                           clock=self.clock)
        loop.activate()
        loop.on_instruction(self.instruction)
        episode_id = f"{self.config.robot}-policy-{seed:06d}"
        start = time.time_ns()
        self._write("instruction", start, self._msg("std_msgs/msg/String",
                                                    data=self.instruction))
        self.recorder.start(self.instruction, episode_id, now_ns=start,
                            checkpoint=str(self.policy.model_id))
        loop.episode_started(episode_id)
        loop.set_enabled(True)
        gripper, ended_by = 0.0, "step limit"
        for k in range(self.config.decisions + 1):
            tick = start + self.period_ns // 2 + k * self.period_ns
            frame = self._write_state(tick, state)
            if k == self.config.decisions:
                break
            self.ticks += 1
            stamp = round(self.ticks * self.period * 1e9)
            loop.on_joint_states(JOINT_NAMES, self.sim.joint_positions(), stamp=stamp)
            loop.on_frame(frame, header=k, received=self.clock(), stamp=stamp)
            if loop.tick():
                loop.frame_wait()
            if self.output.ended:
                ended_by = "terminate"
                break
            action = self.output.take_action()  # x y z deltas, 0 0 0, gripper
            gripper = float(action[6])
            self._write_commands(tick, action[:3] * self.rate, gripper)
            state = self.sim.step(action)
            self.clock.advance(self.period)
        loop.set_enabled(False)
        loop.episode_ended(episode_id)
        self._write_commands(tick, np.zeros(3), gripper)  # the hold the nodes send at the end
        self.sim.step([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, gripper])
        outcome = "success" if self.sim.success() else "failure"
        self.recorder.end(episode_id, outcome, reason=f"policy {ended_by}",
                          now_ns=tick + 20_000_000)
        return episode_id, outcome, k + 1

    def _write_state(self, t_ns: int, state) -> np.ndarray:
        """Record what the nodes publish at a tick; return the frame for the policy (rendered
        again: the same image, and cheap at the data's size)."""
        self._write_frame(t_ns, state)
        return self.sim.render()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qt_ros.demo.policy_recording",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("record_dir")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--task", default="lift")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--params", required=True, help="the demo's sim_params.yaml")
    parser.add_argument("--max-steps", type=int, default=50)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    Path(args.record_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.record_dir) / "convert_mapping.yaml").write_text(autonomous_mapping())
    with PolicyEpisodeRecorder(args.checkpoint, args.record_dir, args.task, args.image_size,
                               args.params, args.max_steps) as recorder:
        for seed in args.seeds:
            episode_id, outcome, steps = recorder.record(seed)
            print(f"recorded {episode_id}: {outcome}, {steps} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
