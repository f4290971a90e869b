"""The PyTorch dataset over a converted dataset: the learner's batch fields, exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from qt_ros.data.dataset_format import DatasetError
from qt_ros.data.dataset_reader import DatasetStore
from qt_ros.data.dataset_writer import DatasetWriter
from qt_ros.data.episode_conversion import ConvertOptions, convert_bag
from qt_ros.data.torch_dataset import QTransformerDataset, save_instruction_embeddings
from qt_ros.episodes.synthetic import frame_color, write_episode

LENGTHS = (5, 3, 7)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """Three recorder episodes (success, failure, success) with a 2-value state, in two shards
    (the first two episodes, then the third)."""
    tmp = tmp_path_factory.mktemp("ds")
    options = ConvertOptions(image_size=(8, 10), gamma=0.98)
    images = []
    with DatasetWriter(tmp / "dataset", image_size=options.image_size,
                       tokenizer=options.tokenizer, gamma=options.gamma,
                       shard_steps=6) as writer:
        for i, (n, outcome) in enumerate(zip(LENGTHS, ("success", "failure", "success"),
                                             strict=True)):
            truth = write_episode(tmp / "bags", f"ep{i}", n, outcome=outcome, state_dim=2,
                                  seed=i, instruction=f"task {i % 2}")
            images.append(truth["image_for_step"])
            episode = convert_bag(truth["bag"], options)
            if i == 2:
                episode.record["source"] = "demonstration"
            writer.append(episode.record, episode.arrays)
    np.save(tmp / "truth_images.npy", np.concatenate(images))  # frame shown at each step
    return tmp / "dataset"


def embeddings(texts: list[str]) -> np.ndarray:
    return np.stack([np.full(4, float(t[-1]), np.float32) for t in texts])


def colour_of(frame: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in frame[:, 0, 0])  # [3, H, W] -> RGB of one pixel


def test_items_hold_history_nstep_returns_and_mc(dataset_dir):
    gamma, n = 0.9, 2
    ds = QTransformerDataset(dataset_dir, history=3, n_step=n, gamma=gamma,
                             instruction_embeddings=embeddings)
    assert len(ds) == sum(LENGTHS) and ds.state_dim == 2 and ds.embedding_dim == 4
    images = np.load(dataset_dir.parent / "truth_images.npy")
    store = DatasetStore(dataset_dir)
    offset = 0
    for e, length in enumerate(LENGTHS):
        reward = 1.0 if e != 1 else 0.0
        state = np.asarray(store.episode_field(e, "state"))
        bins = np.asarray(store.episode_field(e, "action_bins"))
        for t in range(length):
            item = ds[offset + t]
            assert item["frames"].shape == (3, 3, 8, 10) and item["frames"].dtype == torch.uint8
            # history t-2, t-1, t; the first frame repeated before the episode start
            want = [frame_color(images[offset + max(k, 0)]) for k in (t - 2, t - 1, t)]
            assert [colour_of(f) for f in item["frames"]] == want
            nt = min(t + n, length - 1)
            want_next = [frame_color(images[offset + max(k, 0)]) for k in (nt - 2, nt - 1, nt)]
            assert [colour_of(f) for f in item["next_frames"]] == want_next
            done = t + n >= length
            assert item["done"].item() == float(done)
            steps_left = length - 1 - t
            expected_r = reward * gamma ** steps_left if steps_left < n else 0.0
            assert item["reward"].item() == pytest.approx(expected_r)
            assert item["mc_return"].item() == pytest.approx(reward * gamma ** steps_left)
            assert item["discount"].item() == pytest.approx(gamma ** n)
            np.testing.assert_array_equal(item["action_bins"].numpy(), bins[t])
            assert item["action_bins"].dtype == torch.int64
            np.testing.assert_allclose(item["state"].numpy(), state[t])
            np.testing.assert_allclose(item["next_state"].numpy(), state[nt])
            assert item["instruction_embedding"].tolist() == [float(e % 2)] * 4
        offset += length


def test_dataloader_workers_give_the_same_batches(dataset_dir):
    ds = QTransformerDataset(dataset_dir, history=2, n_step=3,
                             instruction_embeddings=embeddings(["task 0", "task 1"]))
    direct = [ds[i] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False,
                        persistent_workers=False)
    batches = list(loader)
    assert batches[0]["frames"].shape == (4, 2, 3, 8, 10)
    assert batches[0]["instruction_embedding"].shape == (4, 4)
    assert batches[0]["state"].shape == (4, 2) and batches[0]["reward"].shape == (4,)
    for key in direct[0]:
        stacked = torch.cat([b[key] for b in batches])
        torch.testing.assert_close(stacked, torch.stack([d[key] for d in direct]))


def test_a_batch_read_whole_equals_the_collated_items(dataset_dir):
    ds = QTransformerDataset(dataset_dir, history=3, n_step=2, gamma=0.9,
                             instruction_embeddings=embeddings)
    assert len({e["shard"] for e in ds.episodes}) == 2
    # any order, repeats, steps of every episode and both shards, episode starts and ends
    indices = [14, 0, 7, 4, 4, 8, 5, 13, 2, 9]
    batch = ds.read_batch(indices)
    collated = default_collate([ds[i] for i in indices])
    assert batch.keys() == collated.keys()
    for key, value in collated.items():
        assert batch[key].dtype == value.dtype, key
        torch.testing.assert_close(batch[key], value, rtol=0, atol=0, msg=key)
    with pytest.raises(IndexError, match="out of range"):
        ds.read_batch([0, len(ds)])


def test_sampling_weights_by_source_and_outcome(dataset_dir):
    ds = QTransformerDataset(dataset_dir, instruction_embeddings=embeddings)
    w = ds.sample_weights(source={"demonstration": 1.0, "autonomous": 1.0})
    demo = slice(LENGTHS[0] + LENGTHS[1], None)
    # groups: autonomous/success (5 steps), autonomous/failure (3), demonstration/success (7)
    assert w[demo].sum().item() == pytest.approx(w[: LENGTHS[0]].sum().item())
    w = ds.sample_weights(outcome={"failure": 0.0})
    assert (w[LENGTHS[0]: LENGTHS[0] + LENGTHS[1]] == 0).all() and (w[demo] > 0).all()
    counts = torch.bincount(torch.tensor(list(ds.sampler(
        3000, outcome={"failure": 0.0}, source={"autonomous": 3.0, "demonstration": 1.0},
        generator=torch.Generator().manual_seed(0)))), minlength=len(ds))
    assert counts[LENGTHS[0]: LENGTHS[0] + LENGTHS[1]].sum() == 0
    assert counts[: LENGTHS[0]].sum().item() / 3000 == pytest.approx(0.75, abs=0.04)


def test_embeddings_and_errors(dataset_dir, tmp_path):
    with pytest.raises(DatasetError, match="no instruction embeddings"):
        QTransformerDataset(dataset_dir)
    with pytest.raises(DatasetError, match="do not match the 2 instructions"):
        QTransformerDataset(dataset_dir, instruction_embeddings=np.zeros((3, 4)))
    save_instruction_embeddings(dataset_dir, embeddings(["task 0", "task 1"]))
    try:
        ds = QTransformerDataset(dataset_dir, episodes=[1])
        assert len(ds) == LENGTHS[1] and ds[0]["instruction_embedding"].tolist() == [1.0] * 4
    finally:
        (dataset_dir / "instruction_embeddings.npy").unlink()
    with pytest.raises(DatasetError, match="not a qt_ros dataset"):
        QTransformerDataset(tmp_path)
    with pytest.raises(ValueError, match="n_step"):
        QTransformerDataset(dataset_dir, n_step=0, instruction_embeddings=embeddings)
