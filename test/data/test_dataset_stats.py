"""Dataset statistics: per-shard sums written by different runs combine into the statistics of
every step at once."""

from __future__ import annotations

import numpy as np

from qt_ros.data.dataset_format import field_shapes
from qt_ros.data.dataset_reader import DatasetStore
from qt_ros.data.dataset_stats import STAT_FIELDS
from qt_ros.data.dataset_writer import DatasetWriter
from qt_ros.qtransformer.tokenizer import ActionTokenizer

IMAGE_SIZE = (4, 6)
STATE_DIM = 3


def _episode(rng: np.random.Generator, tok: ActionTokenizer, n: int) -> dict[str, np.ndarray]:
    shapes = field_shapes(IMAGE_SIZE, STATE_DIM, tok.num_dims)
    bins = np.stack([rng.integers(0, b, n) for b in tok.bins], axis=1)
    reward = np.zeros(n, np.float32)
    reward[-1] = rng.integers(0, 2)
    return {"frames": rng.integers(0, 256, (n, *shapes["frames"])).astype(np.uint8),
            "state": rng.normal(size=(n, STATE_DIM)).astype(np.float32),
            "action": tok.decode(bins).astype(np.float32),
            "action_bins": bins.astype(np.int16), "reward": reward,
            "done": (np.arange(n) == n - 1).astype(np.uint8),
            "mc_return": rng.random(n).astype(np.float32),
            "timestamp": np.arange(n, dtype=np.int64), "image_age": np.zeros(n, np.float32)}


def test_stats_over_shards_and_runs_equal_the_stats_of_all_steps(tmp_path):
    tok = ActionTokenizer()
    rng = np.random.default_rng(3)
    episodes = [_episode(rng, tok, n) for n in (4, 1, 6, 3, 5)]
    root = tmp_path / "dataset"
    # two runs, small shards: sums from four shards and two processes' worth of commits
    for run in (episodes[:3], episodes[3:]):
        with DatasetWriter(root, image_size=IMAGE_SIZE, tokenizer=tok.to_config(), gamma=0.9,
                           shard_steps=4) as writer:
            for arrays in run:
                k = len(writer.keys)
                writer.append({"key": f"e{k}", "bag": f"b{k}", "instruction": "x",
                               "length": len(arrays["reward"])}, arrays)
    store = DatasetStore(root)
    assert len({e["shard"] for e in store.episodes}) >= 3
    stats = store.stats()
    for name in STAT_FIELDS:
        every = np.concatenate([np.asarray(e[name], np.float64).reshape(len(e[name]), -1)
                                for e in episodes])
        assert stats[name]["count"] == len(every) == 19
        np.testing.assert_allclose(stats[name]["mean"], every.mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(stats[name]["std"], every.std(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(stats[name]["min"], every.min(0))
        np.testing.assert_array_equal(stats[name]["max"], every.max(0))
    bins = np.concatenate([e["action_bins"] for e in episodes]).astype(np.int64)
    hist = np.asarray(stats["action_bins_histogram"])
    assert hist.shape == (tok.num_dims, max(tok.bins))
    for i in range(tok.num_dims):
        np.testing.assert_array_equal(hist[i], np.bincount(bins[:, i], minlength=max(tok.bins)))
