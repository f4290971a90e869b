"""Acting with a Q-Transformer: greedy autoregressive decoding over the action dimensions.

``Policy`` keeps, per episode, the instruction's embedding and FiLM parameters and the encoded
tokens of the last w frames, so a control step encodes only the newest frame, runs the trunk
once and the head one cached step per action dimension (``QTransformer.decode``).

Greedy by default: the bin of every dimension is the argmax of exactly the Q function the
learner trains (no sampling). Exploration (epsilon per dimension, or Boltzmann sampling) only
when asked for with an ``Exploration``; its random numbers come from the policy's own seeded
generator, so a run is reproducible.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from qt_ros.data.images import resize_frame
from qt_ros.qtransformer.instruction_encoder import InstructionEncoder
from qt_ros.qtransformer.model import QTransformer
from qt_ros.qtransformer.model_config import mismatch
from qt_ros.qtransformer.tokenizer import ActionTokenizer


@dataclass(frozen=True)
class ActResult:
    """What ``Policy.act`` chose.

    Attributes:
        action: continuous action, float64 [d] (the centre of each chosen bin).
        bins: chosen bin of each dimension, int64 [d].
        q_values: Q(s, a^{1:i-1}, a^i) of each chosen bin, float32 [d].
        terminate: whether the terminate dimension chose "end the episode".
    """

    action: np.ndarray
    bins: np.ndarray
    q_values: np.ndarray
    terminate: bool


@dataclass(frozen=True)
class Exploration:
    """How to explore when collecting data (the default is none: greedy).

    Attributes:
        epsilon: per dimension, probability of a uniformly random bin instead of the argmax.
        temperature: > 0 samples each dimension's bin from softmax(Q / temperature) instead.
    """

    epsilon: float = 0.0
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    @property
    def active(self) -> bool:
        return self.epsilon > 0.0 or self.temperature > 0.0


class Policy:
    """A Q-Transformer acting on camera frames (see the module docstring).

    Attributes:
        tokenizer: the action tokenizer of the checkpoint.
        model_id: identifier of the checkpoint (recorded in every PolicyStep).
        image_size: (height, width) the model sees; ``act`` resizes frames to it.
        history: number of frames w in an observation.
        state_dim: size of the proprioceptive state ``act`` needs (0: none).

    The cached frame encodings belong to the weights they were computed with: after changing
    the model's weights (e.g. evaluating while training), call ``reset`` before acting again.
    """

    def __init__(self, model: QTransformer, tokenizer: ActionTokenizer,
                 encoder: InstructionEncoder, model_id: str = "",
                 exploration: Exploration | None = None, seed: int = 0):
        cfg = model.cfg
        problem = mismatch(cfg, tokenizer.bins, encoder.dim)
        if problem:
            raise ValueError(problem)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.model_id = model_id
        self.image_size = cfg.image_size
        self.history = cfg.history
        self.state_dim = cfg.state_dim
        self.exploration = exploration or Exploration()
        self.device = next(model.parameters()).device
        self._generator = torch.Generator(device="cpu")
        self.seed(seed)
        self.instruction: str | None = None
        self._frames: deque[torch.Tensor] = deque(maxlen=max(cfg.history, 1))

    def seed(self, seed: int) -> None:
        """Reset the exploration random numbers (greedy acting uses none)."""
        self._generator.manual_seed(int(seed))

    @torch.inference_mode()
    def reset(self, instruction: str) -> None:
        """Start an episode: encode the instruction (cached) and forget the frame history."""
        self.instruction = str(instruction)
        emb = self.encoder.encode(self.instruction)
        self._instruction = torch.as_tensor(np.array(emb), device=self.device)[None]
        self._film = self.model.film_params(self._instruction)
        self._frames.clear()

    @torch.inference_mode()
    def act(self, frame: np.ndarray | None, state: np.ndarray | None = None,
            explore: bool | None = None) -> ActResult:
        """One control step: frame (H x W x 3 uint8 RGB, any size), optional state -> action.

        ``explore``: None uses the policy's ``exploration`` (greedy unless one was given),
        False forces greedy, True requires an active exploration.
        """
        if self.instruction is None:
            raise RuntimeError("Policy.act called before Policy.reset(instruction)")
        model = self.model
        if model.training:          # e.g. a learner trained it since: act on the eval-mode Q
            model.eval()
        if self.history > 0:
            tokens = model.encode_frames(self._frame_tensor(frame), self._film)   # [1, k, D]
            if not self._frames:
                # Episode start: the history is the first frame repeated, as in the dataset.
                self._frames.extend([tokens] * self.history)
            else:
                self._frames.append(tokens)
            frame_tokens = torch.stack(tuple(self._frames), dim=1)               # [1, w, k, D]
        else:
            frame_tokens = None
        context = model.context(frame_tokens, self._instruction, self._state_tensor(state))
        bins, q = model.decode(context, self._chooser(explore))
        bins_np = bins[0].cpu().numpy()
        return ActResult(action=self.tokenizer.decode(bins_np), bins=bins_np,
                         q_values=q[0].float().cpu().numpy(),
                         terminate=bool(self.tokenizer.is_terminate(bins_np)))

    def _chooser(self, explore: bool | None):
        exploration = self.exploration
        if explore is True and not exploration.active:
            raise ValueError("act(explore=True) needs a Policy built with an Exploration "
                             "(epsilon > 0 or temperature > 0)")
        if explore is False or not exploration.active:
            return _greedy
        gen = self._generator

        def choose(_dim: int, q: torch.Tensor) -> torch.Tensor:
            q = q.float().cpu()
            valid = torch.isfinite(q)
            if exploration.temperature > 0:
                logits = (q / exploration.temperature).masked_fill(~valid, float("-inf"))
                chosen = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
            else:
                chosen = q.argmax(-1)
            if exploration.epsilon > 0:
                rand = torch.rand(q.shape[0], generator=gen) < exploration.epsilon
                # Uniform over the valid bins: sample from the validity mask as weights.
                uniform = torch.multinomial(valid.float(), 1, generator=gen)[:, 0]
                chosen = torch.where(rand, uniform, chosen)
            return chosen.to(self.device)

        return choose

    def _frame_tensor(self, frame: np.ndarray | None) -> torch.Tensor:
        if frame is None:
            raise ValueError("this policy needs a camera frame (H x W x 3 uint8 RGB)")
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB frame, got {frame.dtype} array of "
                             f"shape {frame.shape}")
        # The dataset's resize: frames reach the model exactly as they did in training.
        frame = resize_frame(frame, self.image_size)
        tensor = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
        return tensor.to(self.device)

    def _state_tensor(self, state: np.ndarray | None) -> torch.Tensor | None:
        if self.state_dim == 0:
            return None
        if state is None:
            raise ValueError(f"this policy needs a state vector of size {self.state_dim} "
                             f"(e.g. joint positions); got none")
        s = np.asarray(state, dtype=np.float32).reshape(-1)
        if s.shape[0] != self.state_dim or not np.isfinite(s).all():
            raise ValueError(f"expected a finite state vector of size {self.state_dim}, got "
                             f"shape {np.shape(state)}")
        return torch.from_numpy(s)[None].to(self.device)


def _greedy(_dim: int, q: torch.Tensor) -> torch.Tensor:
    return q.argmax(dim=-1)
