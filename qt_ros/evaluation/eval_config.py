"""What ``qt-ros eval`` runs: its options (:class:`EvalConfig`) and the set-up they resolve to.

The simulated robot and the policy node are configured as ``sim.launch.py`` configures them:
the ``policy`` section of ``config/policy.yaml``, then of ``config/sim.yaml`` (or ``--params``),
over the defaults of :class:`~qt_ros.control.policy_config.PolicyConfig`; the ``sim_robot`` and
``demonstrator`` sections of the same file for the simulator's camera and control rate and the
demonstrator's step size. The options here then set the task, the scene and what acts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from qt_ros.common.files import shipped_config
from qt_ros.common.settings import from_parameters, setting, setting_of
from qt_ros.control.policy_config import ConfigError, PolicyConfig
from qt_ros.sim.demonstrator import DemonstratorConfig
from qt_ros.sim.node_configs import DemonstratorNodeConfig, SimRobotNodeConfig
from qt_ros.sim.simulator import EPISODE_STEPS_TEXT, SimConfig, episode_steps

POLICIES = ("checkpoint", "demonstrator")
# Far from the seeds data collection uses (the demo: 0.., its policy episodes 10000..), so the
# scenes are unseen in training.
DEFAULT_SEED_OFFSET = 100_000


class EvalError(ValueError):
    """An evaluation that cannot run as asked: says what is wrong and what to do."""


@dataclass(frozen=True)
class EvalConfig:
    """Options of ``qt-ros eval`` (one field per command-line option)."""

    checkpoint: str = setting("", "checkpoint directory (qt-ros train output); not used with "
                              "--policy demonstrator")
    episodes: int = setting(20, "episodes, one per scene seed")
    task: str = setting_of(SimConfig, "task")
    seed_offset: int = setting(DEFAULT_SEED_OFFSET, "scene seed of the first episode (episode "
                               "k: seed_offset + k); the default is far from the seeds of "
                               "data collection")
    max_steps: int = setting(0, "control steps before an episode ends without terminate (0: "
                             f"{EPISODE_STEPS_TEXT}, as qt-ros sim collect)")
    workers: int = setting(1, "worker processes, each with its own simulator and model (one "
                           "torch thread each)")
    out: str = setting("", "output directory (default: <checkpoint>/eval-<task>, or "
                       "eval-demonstrator-<task> for the demonstrator)")
    video: int = setting(0, "write the first K episodes as GIFs")
    policy: str = setting("checkpoint", "what acts: checkpoint (the model) or demonstrator (the "
                          "scripted demonstrator through the same loop: a sanity anchor)",
                          choices=POLICIES)
    noise: float = setting(0.0, "actuation noise: standard deviation (m) of Gaussian noise "
                           "added to every commanded x y z step the robot executes")
    block_range: float = setting_of(SimConfig, "block_range")
    block_yaw: float = setting_of(SimConfig, "block_yaw")
    params: str = setting("", "parameter file of the sim set-up (default: config/sim.yaml), "
                          "applied after config/policy.yaml as sim.launch.py does")
    device: str = setting_of(PolicyConfig, "device")

    def __post_init__(self) -> None:
        for name, low in (("episodes", 1), ("max_steps", 0), ("workers", 1), ("video", 0)):
            if getattr(self, name) < low:
                raise EvalError(f"--{name.replace('_', '-')} must be >= {low}, got "
                                f"{getattr(self, name)}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise EvalError(f"--noise must be >= 0 m, got {self.noise}")
        if self.policy not in POLICIES:
            raise EvalError(f"--policy must be one of {', '.join(POLICIES)}, got {self.policy}")
        if self.policy == "checkpoint" and not self.checkpoint:
            raise EvalError("no checkpoint given: `qt-ros eval CHECKPOINT_DIR --episodes N` "
                            "(or --policy demonstrator to evaluate the scripted demonstrator)")

    @property
    def decisions(self) -> int:
        """Control steps an episode may take (``max_steps``, or the task's default)."""
        return episode_steps(self.task, self.max_steps)

    @property
    def seeds(self) -> list[int]:
        """Scene seed of every episode, in order."""
        return [self.seed_offset + k for k in range(self.episodes)]

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        if self.policy == "demonstrator":
            return Path(f"eval-demonstrator-{self.task}")
        return Path(self.checkpoint) / f"eval-{self.task}"


@dataclass(frozen=True)
class EvalSetup:
    """The configs an evaluation worker builds its simulator, loop and demonstrator from."""

    sim: SimConfig
    policy: PolicyConfig
    demonstrator: DemonstratorConfig
    params_files: tuple[str, ...]


def _sections(path: Path) -> dict[str, dict]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise EvalError(f"cannot read the parameter file {path}: {e}") from e
    if not isinstance(data, dict):
        raise EvalError(f"{path} is not a ROS parameter file (node: ros__parameters: ...)")
    return {node: (section or {}).get("ros__parameters") or {} for node, section in data.items()}


def resolve_setup(config: EvalConfig) -> EvalSetup:
    """The simulator, policy and demonstrator configs of ``config`` (see the module docstring).
    Raises :class:`EvalError` for a missing or unusable parameter file."""
    sim_file = Path(config.params) if config.params else shipped_config("sim.yaml")
    if sim_file is None or not sim_file.is_file():
        raise EvalError(f"parameter file {config.params or 'config/sim.yaml'} not found: pass "
                        f"the sim set-up's parameter file with --params")
    files = [f for f in (shipped_config("policy.yaml"), sim_file) if f is not None]
    values: dict[str, dict] = {"policy": {}, "sim_robot": {}, "demonstrator": {}}
    for path in files:
        for node, section in _sections(path).items():
            values.setdefault(node, {}).update(section)
    try:
        sim_node = from_parameters(SimRobotNodeConfig, values["sim_robot"], task=config.task)
        sim = dataclasses.replace(sim_node.sim_config(), block_range=config.block_range,
                                  block_yaw=config.block_yaw)
        demo_node = from_parameters(DemonstratorNodeConfig, values["demonstrator"],
                                    task=config.task)
        # The anchor is the clean script: no noise of its own, no scripted mistakes.
        demonstrator = dataclasses.replace(demo_node.demonstrator_config(), noise=0.0,
                                           failure_rate=0.0)
        policy = from_parameters(PolicyConfig, values["policy"], checkpoint=config.checkpoint,
                                 device=config.device, num_threads=1)
    except (ConfigError, ValueError, TypeError) as e:
        raise EvalError(f"{' / '.join(map(str, files))}: {e}") from e
    if policy.arm_adapter != "twist" or policy.arm_action != "delta":
        raise EvalError(f"the simulated robot takes twist commands of per-step deltas; "
                        f"{sim_file} sets arm_adapter '{policy.arm_adapter}', arm_action "
                        f"'{policy.arm_action}'")
    if policy.gripper_dimension and policy.gripper_adapter != "float64":
        raise EvalError(f"the simulated robot takes a float64 gripper command; {sim_file} sets "
                        f"gripper_adapter '{policy.gripper_adapter}'")
    if not math.isclose(policy.control_rate, sim_node.control_rate):
        raise EvalError(f"{sim_file}: policy control_rate {policy.control_rate:g} Hz differs "
                        f"from sim_robot's {sim_node.control_rate:g} Hz; set both the same")
    return EvalSetup(sim=sim, policy=policy, demonstrator=demonstrator,
                     params_files=tuple(str(f) for f in files))
