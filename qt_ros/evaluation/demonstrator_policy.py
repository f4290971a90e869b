"""The scripted demonstrator behind the interface of a :class:`~qt_ros.qtransformer.policy.Policy`,
so that ``qt-ros eval --policy demonstrator`` runs it through exactly the loop, safety filter and
simulator mapping a checkpoint goes through: the anchor that tells a broken loop from a weak
policy.

It is a privileged script: it ignores the frame and the state it is given and reads the
simulator's true state (block, goal, contacts). Its action is sent as a policy's would be: the
tokenizer's nearest bin of every dimension, decoded back to that bin's value, so the anchor also
shows what the bins can express. It has no Q values (zeros: finite, as the loop requires).
"""

from __future__ import annotations

import numpy as np

from qt_ros.qtransformer.policy import ActResult
from qt_ros.qtransformer.tokenizer import ActionTokenizer
from qt_ros.sim.demonstrator import DemonstratorConfig, ScriptedDemonstrator
from qt_ros.sim.simulator import TabletopSim


class DemonstratorPolicy:
    """``reset(instruction)``, ``act(frame, state) -> ActResult``, like ``Policy``.

    Attributes:
        tokenizer: the default action tokenizer (the simulator's action layout).
        model_id, image_size, state_dim, history: what the control loop and the report read.
    """

    model_id = "scripted-demonstrator"
    history = 1

    def __init__(self, sim: TabletopSim, config: DemonstratorConfig, state_dim: int):
        self.sim = sim
        self.script = ScriptedDemonstrator(sim.config, config)
        self.tokenizer = ActionTokenizer()
        self.image_size = (sim.config.image_height, sim.config.image_width)
        self.state_dim = int(state_dim)
        self.instruction: str | None = None

    def reset(self, instruction: str) -> None:
        """New episode (the loop calls this when enabled): the script's draws for the scene the
        simulator was reset to."""
        self.instruction = str(instruction)
        self.script.reset(self.sim.episode_seed or 0)

    def act(self, frame: np.ndarray | None, state: np.ndarray | None = None) -> ActResult:
        if self.instruction is None:
            raise RuntimeError("DemonstratorPolicy.act called before reset(instruction)")
        bins = self.tokenizer.encode(self.script.act(self.sim.state()))
        return ActResult(action=self.tokenizer.decode(bins), bins=bins,
                         q_values=np.zeros(len(bins), dtype=np.float32),
                         terminate=bool(self.tokenizer.is_terminate(bins)))
