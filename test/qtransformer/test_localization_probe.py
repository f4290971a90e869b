"""The image encoder localizes: a short training run regresses where a target is in a frame.

Synthetic frames hold one red square at a random place on a grey background. A linear probe on
the mean of a frame's tokens (``QTransformer.encode_frames``) is trained with the encoder for a
600 steps to output the square's centre. With the position embedding before the
TokenLearner the probe finds it; without it (the TokenLearner pools features, not positions)
it cannot, which is what made the policy unable to find the block (docs/design.md 3.2).
"""

from __future__ import annotations

import pytest
import torch

from qt_ros.qtransformer.model import QTransformer
from qt_ros.qtransformer.model_config import model_config

SIZE = 64
SQUARE = 8


def _frames(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames [n, 1, 3, SIZE, SIZE] and the squares' centres in [-1, 1], [n, 2]."""
    frames = torch.full((n, 1, 3, SIZE, SIZE), 128, dtype=torch.uint8)
    corner = torch.randint(0, SIZE - SQUARE + 1, (n, 2), generator=g)
    for i, (r, c) in enumerate(corner.tolist()):
        frames[i, 0, :, r:r + SQUARE, c:c + SQUARE] = torch.tensor([230, 20, 20])[:, None, None]
    centre = (corner.float() + SQUARE / 2) / SIZE * 2 - 1
    return frames, centre


def _probe_r2(position_embedding: bool, steps: int = 600) -> float:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cfg = model_config("tiny", image_size=(SIZE, SIZE), history=1, action_bins=(4, 2),
                       instruction_dim=8, position_embedding=position_embedding)
    model = QTransformer(cfg)
    head = torch.nn.Linear(cfg.d_model, 2)
    params = [*model.encoder.parameters(), *model.token_learner.parameters(),
              model.token_pos, *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    instruction = torch.zeros(32, cfg.instruction_dim)

    def predict(frames: torch.Tensor) -> torch.Tensor:
        film = model.film_params(instruction[:frames.shape[0]])
        tokens = model.token_learner(model.encoder(frames[:, 0].float(), film))  # pixels 0..255
        return head(tokens.mean(1))

    for _ in range(steps):
        frames, centre = _frames(32, g)
        loss = (predict(frames) - centre).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        frames, centre = _frames(32, torch.Generator().manual_seed(123))  # unseen frames
        error = (predict(frames) - centre).square().sum()
        return float(1 - error / (centre - centre.mean(0)).square().sum())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_encoder_localizes_a_target_after_a_short_training_run():
    r2 = _probe_r2(position_embedding=True)
    assert r2 > 0.8, f"probe R^2 {r2:.2f}: the encoder does not say where the target is"


def test_without_the_position_embedding_it_does_not():
    r2 = _probe_r2(position_embedding=False)
    assert r2 < 0.5, f"probe R^2 {r2:.2f} without position embedding"
