"""``qt-ros train``: from converted episode bags to a checkpoint the policy loads, alone or under
torchrun (DDP), with clear errors for what a user gets wrong."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from qt_ros.cli import main as qt_ros_main
from qt_ros.episodes.synthetic import write_episode
from qt_ros.qtransformer.checkpoint import load_policy, make_random_checkpoint, read_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    for i in range(4):
        write_episode(root / "bags", f"ep{i}", 10, outcome="success" if i % 2 == 0 else "failure",
                      pattern="texture", seed=i)
    assert qt_ros_main(["convert", str(root / "bags"), "--out", str(root / "data"),
                        "--image-size", "32", "--quiet"]) == 0
    return root / "data"


def _train(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qt_ros.cli", "train", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


COMMON = ["--preset", "tiny", "--encoder", "hash", "--batch-size", "4", "--workers", "0",
          "--log-every", "5"]


def test_options_are_the_config_fields_with_their_defaults():
    """Every option comes from TrainConfig / LearnerConfig, so the defaults are theirs; the
    learner's flags keep their names (--alpha is conservative_weight)."""
    from qt_ros.cli import build_parser
    from qt_ros.commands.train import config_from_args
    from qt_ros.data.returns import DEFAULT_GAMMA
    from qt_ros.qtransformer.learner import LearnerConfig
    from qt_ros.qtransformer.trainer import TrainConfig

    def parse(*args: str) -> TrainConfig:
        argv = ["train", "data", "--out", "ckpt", *args]
        return config_from_args(build_parser(argv).parse_args(argv))

    assert parse() == TrainConfig(dataset="data", out="ckpt")
    assert parse().gamma == DEFAULT_GAMMA and parse().learner == LearnerConfig()
    cfg = parse("--lr", "3e-4", "--tau", "0.5", "--alpha", "0", "--no-target-network",
                "--no-autoregressive-targets", "--no-bootstrap", "--no-mc-lower-bound",
                "--batch-size", "4", "--n-step", "3", "--gamma", "0.9", "--max-minutes", "2",
                "--init", "old/", "--history", "3", "--betas", "0.8", "0.99")
    assert cfg.learner == LearnerConfig(lr=3e-4, tau=0.5, conservative_weight=0.0,
                                        target_network=False, autoregressive_targets=False,
                                        bootstrap=False, mc_lower_bound=False,
                                        betas=(0.8, 0.99))
    assert (cfg.batch_size, cfg.n_step, cfg.gamma, cfg.max_minutes, cfg.init, cfg.history) == \
        (4, 3, 0.9, 2.0, "old/", 3)
    assert TrainConfig("d", "o", learner={"lr": 0.1}).learner == LearnerConfig(lr=0.1)
    cfg = parse("--algo", "bc", "--bc-episodes", "all")
    assert cfg.learner == LearnerConfig(algo="bc") and cfg.bc_episodes == "all"
    assert parse().learner.algo == "qt" and parse().bc_episodes == "successes"


def test_help_shows_every_option_without_loading_torch():
    code = ("import sys\n"
            "from qt_ros.cli import main\n"
            "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("no torch")
    for flag in ("--out", "--preset", "--history", "--steps", "--batch-size", "--n-step",
                 "--gamma", "--encoder", "--demo-weight", "--autonomous-weight", "--device",
                 "--workers", "--save-every", "--log-every", "--max-minutes", "--init", "--seed",
                 "--lr", "--tau", "--alpha", "--no-target-network", "--no-autoregressive-targets",
                 "--no-bootstrap", "--no-mc-lower-bound", "--algo", "--bc-episodes"):
        assert flag in result.stdout, flag
    assert "(default: 0.98)" in result.stdout
    # The baseline and the paper's ablations are documented where a user looks for them.
    assert "--algo bc (behaviour cloning" in " ".join(result.stdout.split())
    assert "--alpha 0 (no conservative term)" in " ".join(result.stdout.split())


def test_a_bad_learner_value_is_a_clear_error(tmp_path):
    result = _train(str(tmp_path), "--out", str(tmp_path / "ckpt"), "--tau", "2", *COMMON)
    assert result.returncode == 2
    assert "tau must be in (0, 1]" in result.stderr and "Traceback" not in result.stderr


def test_train_writes_a_checkpoint_the_policy_loads(dataset, tmp_path):
    out = tmp_path / "ckpt"
    result = _train(str(dataset), "--out", str(out), "--steps", "20", "--save-every", "10",
                    *COMMON)
    assert result.returncode == 0, result.stderr
    config = read_config(out)
    assert config["step"] == 20
    assert config["extra"]["learner"]["conservative_weight"] == 1.0
    assert config["extra"]["algorithm"] == {"algo": "qt", "label": "Q-T", "switches": {}}
    assert tuple(config["image_size"]) == (32, 32)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert (out / "training.png").stat().st_size > 1000

    policy = load_policy(out)
    policy.reset("pick up the red cube")
    result = policy.act(np.zeros((48, 64, 3), np.uint8))
    assert len(result.bins) == 8 and np.isfinite(result.q_values).all()
    assert policy.model_id.endswith(config["model_id"].split("@")[1])


def test_keep_every_leaves_loadable_copies_of_the_weights_to_choose_from(dataset, tmp_path):
    out = tmp_path / "run"
    result = _train(str(dataset), "--out", str(out), "--steps", "20", "--keep-every", "8",
                    *COMMON)
    assert result.returncode == 0, result.stderr
    kept = sorted((out / "steps").iterdir())
    assert [p.name for p in kept] == ["0000008", "0000016", "0000020"]  # and the last step
    assert [read_config(p)["step"] for p in kept] == [8, 16, 20]
    final = load_file(out / "model.safetensors")
    assert all(np.array_equal(final[k], v)
               for k, v in load_file(kept[-1] / "model.safetensors").items())
    first = load_file(kept[0] / "model.safetensors")
    assert any(not np.array_equal(final[k], first[k]) for k in final)
    assert load_policy(kept[0]).model_id.startswith("0000008@8#")


def test_training_changes_the_weights_and_init_continues(dataset, tmp_path):
    init = make_random_checkpoint(tmp_path / "init", preset="tiny", image_size=(32, 32))
    out = tmp_path / "ckpt"
    result = _train(str(dataset), "--out", str(out), "--steps", "10", "--init", str(init),
                    *COMMON)
    assert result.returncode == 0, result.stderr
    before, after = load_file(init / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_mismatched_checkpoint_is_a_clear_error(dataset, tmp_path):
    init = make_random_checkpoint(tmp_path / "init", preset="tiny", image_size=(48, 48))
    result = _train(str(dataset), "--out", str(tmp_path / "ckpt"), "--steps", "2",
                    "--init", str(init), *COMMON)
    assert result.returncode == 2
    assert "image size (48, 48) vs the dataset's (32, 32)" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = _train(str(tmp_path / "nope"), "--out", str(tmp_path / "ckpt"), *COMMON)
    assert result.returncode == 2
    assert "nope" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one_with_the_global_batch(dataset, tmp_path):
    """The same command under torchrun: 2 CPU processes (gloo) of batch 4 reach the weights one
    process of batch 8 reaches (each rank draws its slice of the step's global batch, DDP
    averages the gradients); rank 0 alone writes the checkpoint and the metrics."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    args = ["--steps", "6", "--lr", "1e-3", "--preset", "tiny", "--encoder", "hash",
            "--workers", "0", "--log-every", "3"]
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "qt_ros.cli", "train",
         str(dataset), "--out", str(ddp), "--batch-size", "4", *args],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    config = read_config(ddp)
    assert config["step"] == 6 and config["extra"]["world_size"] == 2
    load_policy(ddp)
    one = tmp_path / "one"
    result = _train(str(dataset), "--out", str(one), "--batch-size", "8", *args)
    assert result.returncode == 0, result.stderr[-4000:]
    two, single = load_file(ddp / "model.safetensors"), load_file(one / "model.safetensors")
    last = load_file(ddp / "last" / "model.safetensors")
    assert all(np.array_equal(two[k], last[k]) for k in two)   # last/ is the final checkpoint
    # Adam moves a weight by up to lr = 1e-3 a step whatever its gradient, so the different
    # reduction order of DDP shows as ~1e-6 on weights whose gradient is ~0; another batch
    # would differ by ~1e-3.
    for name, value in single.items():
        np.testing.assert_allclose(two[name], value, rtol=1e-4, atol=2e-5, err_msg=name)
    lines = [(ddp / "metrics.jsonl").read_text().splitlines(),
             (one / "metrics.jsonl").read_text().splitlines()]
    assert [json.loads(x)["step"] for x in lines[0]] == [3, 6]
    # Logged metrics are the mean over ranks: the loss of the global batch.
    for a, b in zip(*lines, strict=True):
        assert json.loads(a)["loss"] == pytest.approx(json.loads(b)["loss"], rel=1e-4)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config" / "train").glob("*.yaml")))
def test_shipped_training_configs_resolve(name):
    """Every config/train/*.yaml a README or the demo points to is a valid `--config`: known
    names only, learner fields that LearnerConfig accepts, model fields that fit a preset."""
    from qt_ros.qtransformer.model_config import model_config
    from qt_ros.qtransformer.train_config import merge, read_config_file

    values = read_config_file(REPO / "config" / "train" / name)
    given = {"preset": "tiny", **{k: v for k, v in (("dataset", ["data"]), ("out", "run"))
                                  if k not in values}}
    cfg = merge(values, given, {})
    model_config(cfg.preset, **(cfg.model or {}))
    if name == "noisy_mix.yaml":        # the measured settings the file's comment states
        assert cfg.learner.conservative_radius == 0.2 and cfg.history == 1
    if name == "place.yaml":
        assert cfg.state_norm and cfg.steps == 32000 and cfg.history == 1


def test_state_norm_keeps_the_datas_state_statistics_in_the_checkpoint(tmp_path):
    """``--state-norm``: the checkpoint carries the data's state mean and std, so the policy
    standardizes the robot's state as training did; ``--init`` keeps the statistics it has."""
    from qt_ros.data.synthetic_dataset import EpisodeSpec, write_dataset

    data = write_dataset(tmp_path / "data", [EpisodeSpec(12, "success"),
                                             EpisodeSpec(9, "failure")], state_dim=4)
    stats = json.loads((data / "stats.json").read_text())["state"]
    normed, plain, again = tmp_path / "normed", tmp_path / "plain", tmp_path / "again"
    for out, extra in ((normed, ["--state-norm"]), (plain, []), (again, ["--init", str(normed)])):
        result = _train(str(data), "--out", str(out), "--steps", "4", *COMMON, *extra)
        assert result.returncode == 0, result.stderr
    model = read_config(normed)["model"]
    assert model["state_mean"] == pytest.approx(stats["mean"])
    assert model["state_std"] == pytest.approx(stats["std"])
    assert read_config(plain)["model"]["state_mean"] == []
    assert read_config(again)["model"]["state_mean"] == model["state_mean"]
    policy = load_policy(normed)
    policy.reset("pick up the red cube")
    result = policy.act(np.zeros((32, 32, 3), np.uint8), np.array([0.1, 0.0, 0.02, 0.01]))
    assert np.isfinite(result.q_values).all()
