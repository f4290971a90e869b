"""Several datasets trained on as one: read in place, drawn in the shares asked for, each rank
its own slice of a batch that depends only on the step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qt_ros.data.dataset_format import DatasetError
from qt_ros.data.dataset_mixture import DatasetMixture, StepBatchSampler, sampling_groups
from qt_ros.data.synthetic_dataset import EpisodeSpec, write_dataset
from qt_ros.qtransformer.tokenizer import ActionTokenizer

EMBED = np.zeros((1, 4), np.float32)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    # A: 3 episodes, 30 steps, mostly successes; B: 2 episodes, 6 steps.
    a = write_dataset(root / "a", [EpisodeSpec(10, "success"), EpisodeSpec(12, "success"),
                                   EpisodeSpec(8, "failure", "demonstration")])
    b = write_dataset(root / "b", [EpisodeSpec(3, "failure"), EpisodeSpec(3, "success")], seed=1)
    return a, b


def _mixture(paths, weights=None):
    return DatasetMixture(paths, weights, history=2, instruction_embeddings=EMBED)


def _draws(mixture, steps=300, batch=8, **shares):
    sampler = StepBatchSampler(sampling_groups(mixture, **shares), batch, seed=3, stop=steps)
    return np.concatenate([np.asarray(b) for b in sampler])


def test_datasets_are_drawn_in_the_shares_asked_for_whatever_their_size(two):
    mixture = _mixture(two, weights=[1, 3])
    assert len(mixture) == 36 and len(mixture.episodes) == 5
    part = mixture.part_of(_draws(mixture))
    # B has 6 of the 36 steps but gets 3/4 of the samples; A the other quarter.
    assert abs(np.mean(part == 1) - 0.75) < 0.03
    equal = mixture.part_of(_draws(_mixture(two)))
    assert abs(np.mean(equal == 1) - 0.5) < 0.03


def test_outcome_and_source_shares_apply_within_each_dataset(two):
    mixture = _mixture(two)
    indices = _draws(mixture, outcome={"success": 1, "failure": 0})
    outcomes = {mixture.episodes[_episode(mixture, i)]["outcome"] for i in indices}
    assert outcomes == {"success"}
    a_only = _mixture(two[:1])
    indices = _draws(a_only, source={"demonstration": 1, "autonomous": 1})
    demo = np.mean([a_only.episodes[_episode(a_only, i)]["source"] == "demonstration"
                    for i in indices])
    assert abs(demo - 0.5) < 0.04          # 8 of 30 steps, half the samples


def _episode(mixture, index: int) -> int:
    """Position in mixture.episodes of the episode of global step ``index``."""
    k = int(mixture.part_of([index])[0])
    part = mixture.parts[k]
    before = sum(len(p.episodes) for p in mixture.parts[:k])
    return before + int(part._episode_of[index - int(mixture._offsets[k])])


def test_a_batch_depends_on_the_step_only_and_ranks_split_it(two):
    groups = sampling_groups(_mixture(two))
    one = StepBatchSampler(groups, 8, seed=5)
    ranks = [StepBatchSampler(groups, 4, seed=5, rank=r, world=2) for r in (0, 1)]
    resumed = StepBatchSampler(groups, 8, seed=5, start=7, stop=9)
    for step in (0, 7, 8):
        assert ranks[0].batch(step) + ranks[1].batch(step) == one.batch(step)
    assert list(resumed) == [one.batch(7), one.batch(8)]
    assert one.batch(0) != one.batch(1)


def test_items_come_from_their_own_dataset(two):
    mixture = _mixture(two)
    last = mixture[len(mixture) - 1]
    direct = mixture.parts[1][5]
    assert np.array_equal(last["frames"].numpy(), direct["frames"].numpy())
    low, high, _ = mixture.return_range()
    assert low == 0.0 and high == pytest.approx(1.0)


def test_a_batch_across_datasets_is_read_in_the_order_asked(two):
    mixture = _mixture(two)
    indices = [35, 0, 31, 12, 30, 35, 29]            # B, A, B, A, B, B, A
    batch = mixture.read_batch(indices)
    for row, index in enumerate(indices):
        for key, value in mixture[index].items():
            torch.testing.assert_close(batch[key][row], value, rtol=0, atol=0, msg=key)
    only_a = mixture.read_batch([3, 1])
    torch.testing.assert_close(only_a["frames"], torch.stack([mixture[3]["frames"],
                                                              mixture[1]["frames"]]))


def test_datasets_that_do_not_fit_together_are_a_clear_error(two, tmp_path):
    other = write_dataset(tmp_path / "big", [EpisodeSpec(3)], image_size=(48, 48))
    with pytest.raises(DatasetError, match=r"image size \(48, 48\) vs \(32, 32\)"):
        _mixture([two[0], other])
    bins = ActionTokenizer.uniform(["x", "terminate"], [-1, 0], [1, 1], 16, "terminate")
    other = write_dataset(tmp_path / "tok", [EpisodeSpec(3)], tokenizer=bins)
    with pytest.raises(DatasetError, match="another action tokenizer"):
        _mixture([two[0], other])
    with pytest.raises(DatasetError, match="does not exist"):
        _mixture([two[0], tmp_path / "missing"])
    with pytest.raises(ValueError, match="one weight per dataset"):
        _mixture(two, weights=[1])


def test_state_statistics_pool_every_step_of_every_dataset(tmp_path):
    """``--state-norm`` standardizes with these: each step counts once, whatever the shares."""
    a = write_dataset(tmp_path / "a", [EpisodeSpec(10, "success"), EpisodeSpec(7, "failure")],
                      state_dim=3)
    b = write_dataset(tmp_path / "b", [EpisodeSpec(5, "success")], state_dim=3, seed=1)
    mixture = DatasetMixture([a, b], [1, 9], history=1, instruction_embeddings=EMBED)
    states = np.stack([mixture[i]["state"].numpy() for i in range(len(mixture))])
    assert len(states) == 22
    mean, std = mixture.state_stats()
    np.testing.assert_allclose(mean, states.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, states.std(0), rtol=1e-4)
    plain = write_dataset(tmp_path / "plain", [EpisodeSpec(4, "success")])
    assert DatasetMixture([plain], history=1,
                          instruction_embeddings=EMBED).state_stats() == ([], [])
