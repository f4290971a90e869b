"""Random-shift augmentation: a translated copy of each sample, history moved together."""

import pytest
import torch

from qt_ros.qtransformer.image_augmentation import random_shift
from qt_ros.qtransformer.learner_config import LearnerConfig


def _offset(original: torch.Tensor, shifted: torch.Tensor, pad: int) -> tuple[int, int]:
    """The (dy, dx) within [-pad, pad] that maps ``original`` [C, H, W] onto ``shifted``
    (comparing the pixels that stay inside the picture), or fail."""
    h, w = original.shape[-2:]
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            src = original[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
            dst = shifted[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            if torch.equal(src, dst):
                return dy, dx
    raise AssertionError("the shifted frame is no translation of the original")


def test_each_sample_is_a_translation_shared_by_its_history():
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (16, 3, 3, 12, 12), dtype=torch.uint8)
    out = random_shift(frames, 2)
    assert out.shape == frames.shape and out.dtype == torch.uint8
    offsets = []
    for i in range(frames.shape[0]):
        per_frame = {_offset(frames[i, j], out[i, j], 2) for j in range(frames.shape[1])}
        assert len(per_frame) == 1, "the frames of one sample moved apart"
        offsets.append(per_frame.pop())
    assert all(abs(dy) <= 2 and abs(dx) <= 2 for dy, dx in offsets)
    assert len(set(offsets)) > 3, "samples should draw their own shifts"


def test_edges_repeat_and_zero_pad_is_identity():
    frames = torch.arange(36, dtype=torch.uint8).reshape(1, 1, 1, 6, 6)
    assert torch.equal(random_shift(frames, 0), frames)
    torch.manual_seed(1)
    out = random_shift(frames, 3)
    # Only values of the original appear: the border repeats edge pixels, never zeros.
    assert set(out.unique().tolist()) <= set(frames.unique().tolist())


def test_shift_is_reproducible_from_the_seed():
    frames = torch.randint(0, 256, (4, 1, 3, 8, 8), dtype=torch.uint8)
    torch.manual_seed(5)
    a = random_shift(frames, 2)
    torch.manual_seed(5)
    assert torch.equal(a, random_shift(frames, 2))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="frames"):
        random_shift(torch.zeros(3, 8, 8, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="image_shift"):
        LearnerConfig(image_shift=-1)
