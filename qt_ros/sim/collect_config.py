"""The options of ``qt-ros sim collect`` (:mod:`qt_ros.sim.collection`): every default and its
description, once; the verb's command line is made from them."""

from __future__ import annotations

from dataclasses import dataclass

from qt_ros.common.settings import setting
from qt_ros.sim.node_configs import DEFAULT_CONTROL_RATE
from qt_ros.sim.simulator import EPISODE_STEPS_TEXT, TASKS, SimConfig, episode_steps


class CollectError(ValueError):
    """Options or a record directory that collection cannot work with; the text says the fix."""


@dataclass(frozen=True)
class CollectConfig:
    """What ``qt-ros sim collect`` records (every option of the verb)."""

    out: str = setting(help="record directory: one bag per episode and catalog.json "
                             "(created, or added to)")
    demos: int = setting(10, "clean demonstrations (demonstrator noise demo_noise, no "
                             "scripted mistakes)")
    replays: int = setting(0, "noisy replays (noise drawn from replay_noise, a scripted "
                              "mistake with probability replay_mistake_rate: mostly failures)")
    task: str = setting("lift", "the simulator's task", choices=TASKS)
    seed: int = setting(0, "episode i (demonstrations first) uses scene and demonstrator "
                           "seed seed + i")
    workers: int = setting(0, "worker processes, each with its own simulator (0: one per CPU "
                              "core)")
    image_size: str = setting("128", "camera image size, N or HxW pixels (config/sim.yaml: "
                                     "128)")
    demo_noise: float = setting(0.002, "demonstrator noise of the clean demonstrations (m "
                                       "per step; config/sim.yaml's demonstrator)")
    replay_noise: tuple[float, float] = setting(
        (0.006, 0.01), "(low, high) of the per-episode demonstrator noise of a replay (m per "
                       "step)")
    replay_mistake_rate: float = setting(0.6, "probability of a scripted mistake in a replay "
                                              "(off-centre grasp, drop, early terminate)")
    max_steps: int = setting(0, "decisions per episode before the episode is ended with a "
                                f"hold (0: {EPISODE_STEPS_TEXT}, as make demo)")
    robot: str = setting("qt_ros_sim", "robot name in the episode ids and metadata "
                                       "(config/sim.yaml's recorder)")
    compression: str = setting("none", "MCAP chunk compression", choices=("none", "zstd"))
    resume: bool = setting(False, "skip this run's episodes already recorded in the record "
                                  "directory (after Ctrl-C) instead of refusing")

    def __post_init__(self) -> None:
        if not self.out:
            raise CollectError("--out RECORD_DIR is required (where the bags go)")
        if self.demos < 0 or self.replays < 0 or self.demos + self.replays == 0:
            raise CollectError(f"nothing to collect: --demos {self.demos} and --replays "
                               f"{self.replays}; ask for at least one episode (both >= 0)")
        if self.task not in TASKS:
            raise CollectError(f"unknown task '{self.task}'; choose one of {sorted(TASKS)}")
        if self.workers < 0:
            raise CollectError(f"--workers must be >= 0 (0: one per core), got {self.workers}")
        if self.seed < 0:
            raise CollectError(f"--seed must be >= 0, got {self.seed}")
        low, high = self.replay_noise
        if not 0 <= self.demo_noise or not 0 <= low <= high:
            raise CollectError(f"noise must be >= 0 m and --replay-noise LOW HIGH with LOW <= "
                               f"HIGH, got {self.demo_noise} and {self.replay_noise}")
        if not 0 <= self.replay_mistake_rate <= 1:
            raise CollectError(f"--replay-mistake-rate must be in [0, 1], got "
                               f"{self.replay_mistake_rate}")
        if self.max_steps < 0:
            raise CollectError(f"--max-steps must be >= 0, got {self.max_steps}")
        self.image_hw  # noqa: B018 - validates --image-size

    @property
    def image_hw(self) -> tuple[int, int]:
        """``image_size`` as (height, width)."""
        try:
            parts = [int(p) for p in str(self.image_size).lower().split("x")]
        except ValueError:
            parts = []
        parts = parts * 2 if len(parts) == 1 else parts
        if len(parts) != 2 or min(parts) < 8:
            raise CollectError(f"--image-size must be N or HxW with at least 8 pixels, got "
                               f"'{self.image_size}'")
        return parts[0], parts[1]

    @property
    def decisions(self) -> int:
        return episode_steps(self.task, self.max_steps)

    def sim_config(self) -> SimConfig:
        h, w = self.image_hw
        return SimConfig(task=self.task, control_period=1.0 / DEFAULT_CONTROL_RATE,
                         image_width=w, image_height=h)
