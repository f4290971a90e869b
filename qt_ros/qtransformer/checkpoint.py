"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``config.json``.

config.json holds everything that rebuilds the policy without unpickling anything: the model
config, the action tokenizer, the instruction encoder, image size, history, state size, the
training step, a content-derived ``model_id`` and free-form ``extra`` (e.g. the learner config,
and which algorithm trained it: ``trained_by(config)`` reads that for an evaluation table).

    save_checkpoint(dir, model, tokenizer, encoder_config, step)   # after training
    policy = load_policy(dir)                                      # on the robot
    make_random_checkpoint(dir, preset="tiny")                     # tests and demos
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from qt_ros.qtransformer.instruction_encoder import EncoderConfig, make_encoder
from qt_ros.qtransformer.model import QTransformer
from qt_ros.qtransformer.model_config import ModelConfig, model_config
from qt_ros.qtransformer.policy import Exploration, Policy
from qt_ros.qtransformer.tokenizer import ActionTokenizer

FORMAT = "qt_ros.checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or does not match this code."""


def save_checkpoint(directory: str | Path, model: QTransformer, tokenizer: ActionTokenizer,
                    encoder_config: EncoderConfig, step: int = 0,
                    extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created if needed).

    The config is written last (atomically), so a directory with a config.json always has the
    matching weights. Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    if tuple(tokenizer.bins) != tuple(cfg.action_bins):
        raise ValueError(f"tokenizer bins {tokenizer.bins} do not match the model's "
                         f"{list(cfg.action_bins)}")
    if encoder_config.dim != cfg.instruction_dim:
        raise ValueError(f"encoder dim {encoder_config.dim} does not match the model's "
                         f"instruction_dim {cfg.instruction_dim}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / WEIGHTS)
    digest = _file_digest(directory / WEIGHTS)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model_id": f"{directory.resolve().name}@{int(step)}#{digest[:10]}",
        "step": int(step),
        "image_size": list(cfg.image_size),
        "history": cfg.history,
        "state_dim": cfg.state_dim,
        "model": cfg.to_config(),
        "tokenizer": tokenizer.to_config(),
        "encoder": encoder_config.to_config(),
        "extra": extra or {},
    }
    tmp = directory / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, directory / CONFIG)
    return directory


def read_config(directory: str | Path) -> dict:
    """The checkpoint's config.json, checked for format and version."""
    directory = Path(directory)
    path = directory / CONFIG
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist or is not a directory "
                              f"(expected a directory holding {WEIGHTS} and {CONFIG})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {CONFIG}; is it a checkpoint "
                              f"directory written by `qt-ros train`?")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is not valid JSON: {exc}") from exc
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a qt_ros checkpoint config (format "
                              f"{config.get('format')!r})")
    if config.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {directory} has version {config['version']}, this "
                              f"qt_ros reads up to {VERSION}: update qt_ros")
    return config


def trained_by(config: dict) -> dict:
    """Which algorithm trained a checkpoint, from its config (``read_config``):
    ``{"algo": "qt" | "bc" | "random", "label": str, "switches": {...}}``.

    ``qt-ros train`` records it in ``extra.algorithm`` (``trainer.algorithm_summary``); for a
    checkpoint written before that record it is rebuilt from the recorded training options.
    """
    from qt_ros.qtransformer.trainer import TrainConfig, algorithm_summary

    extra = config.get("extra") or {}
    if "algorithm" in extra:
        return extra["algorithm"]
    if extra.get("random_init"):
        return {"algo": "random", "label": "random weights", "switches": {}}
    try:
        return algorithm_summary(TrainConfig(**extra["train"], learner=extra["learner"]))
    except (KeyError, TypeError, ValueError):
        return {"algo": "unknown", "label": "unknown", "switches": {}}


def load_model(directory: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[QTransformer, ActionTokenizer, EncoderConfig, dict]:
    """Rebuild the model (eval mode) from a checkpoint: (model, tokenizer, encoder config,
    full config)."""
    directory = Path(directory)
    config = read_config(directory)
    try:
        cfg = ModelConfig.from_config(config["model"])
        tokenizer = ActionTokenizer.from_config(config["tokenizer"])
        encoder_config = EncoderConfig.from_config(config["encoder"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory}: bad {CONFIG}: {exc}") from exc
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {directory} has {CONFIG} but no {WEIGHTS}")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {weights} cannot be read: {exc}") from exc
    model = QTransformer(cfg).to(device)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {weights} does not match its {CONFIG}: {exc}") from exc
    return model.eval(), tokenizer, encoder_config, config


def load_policy(path: str | Path, device: str | torch.device = "cpu",
                exploration: Exploration | None = None, seed: int = 0) -> Policy:
    """A ready ``Policy`` from a checkpoint directory (greedy unless ``exploration``)."""
    model, tokenizer, encoder_config, config = load_model(path, device)
    model_id = config.get("model_id") or f"{Path(path).resolve().name}@{config.get('step', 0)}"
    return Policy(model, tokenizer, make_encoder(encoder_config), model_id=model_id,
                  exploration=exploration, seed=seed)


def make_random_checkpoint(directory: str | Path, preset: str = "tiny",
                           tokenizer: ActionTokenizer | None = None, seed: int = 0,
                           encoder_config: EncoderConfig | None = None,
                           **model_overrides) -> Path:
    """A randomly initialised model saved as a real checkpoint (tests, demos, benchmarks).

    The default instruction encoder is ``hash`` (no model files to load); ``model_overrides``
    replace fields of the preset (e.g. ``image_size=(64, 64)``, ``state_dim=7``).
    """
    tokenizer = tokenizer or ActionTokenizer()
    encoder_config = encoder_config or EncoderConfig(kind="hash", dim=64)
    cfg = model_config(preset, action_bins=tuple(tokenizer.bins),
                       instruction_dim=encoder_config.dim, **model_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = QTransformer(cfg)
    return save_checkpoint(directory, model, tokenizer, encoder_config, step=0,
                           extra={"random_init": True, "seed": seed, "preset": preset})


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
