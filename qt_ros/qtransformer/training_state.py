"""The whole state of a training run on disk, for an exact resume, without pickle.

A state directory (``RUN/last``, ``RUN/best``) is a checkpoint (``model.safetensors`` +
``config.json``: ``load_policy`` and ``qt-ros eval`` take it as it is) plus:

    training_state.safetensors   target network ("target/<name>"), optimizer moments
                                 ("optimizer/<param index>/<key>"), each rank's RNG
                                 ("rng/cpu/<rank>", "rng/cuda/<rank>")
    training_state.json          format, version, step, the learner's step, the optimizer's
                                 param groups and scalar state, the sampler's state, the
                                 monitor's (elapsed time, best metric)

Tensors go to safetensors and everything else to JSON, so loading unpickles nothing. The
learning-rate schedule is a function of the step and the sampler draws batch ``s`` from a
generator seeded by ``s`` (:mod:`qt_ros.data.dataset_mixture`), so the step restores both. A
state is written into a temporary directory and swapped in with two renames; if a crash falls
between them, the previous state is found under ``.<name>.old``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from qt_ros.qtransformer.checkpoint import WEIGHTS, CheckpointError, read_config, save_checkpoint

FORMAT = "qt_ros.training_state"
VERSION = 1
TENSORS = "training_state.safetensors"
META = "training_state.json"


@dataclass
class TrainingState:
    """A state read back: the directory, its checkpoint config, metadata and tensors."""

    directory: Path
    config: dict
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def save_training_state(directory: str | Path, learner, tokenizer, encoder_config, step: int,
                        extra: dict, rng: dict[str, torch.Tensor], sampler: dict,
                        monitor: dict) -> Path:
    """Write the state of ``learner`` (model, target network, optimizer) at ``step``."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(tmp, learner.model, tokenizer, encoder_config, step, extra)
    tensors = {f"rng/{k}": v.detach().cpu().contiguous() for k, v in rng.items()}
    if learner.target is not None:
        tensors.update({f"target/{k}": v.detach().cpu().contiguous()
                        for k, v in learner.target.state_dict().items()})
    optimizer = learner.optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for index, values in optimizer["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    save_file(tensors, str(tmp / TENSORS), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "version": VERSION, "step": int(step),
            "learner_step": int(learner.step),
            "optimizer": {"param_groups": _plain(optimizer["param_groups"]),
                          "scalars": scalars},
            "sampler": sampler, "monitor": monitor}
    (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
    _swap_in(tmp, directory)
    return directory


def load_training_state(directory: str | Path) -> TrainingState:
    """Read a state directory (or the previous one a crash left under ``.<name>.old``)."""
    directory = Path(directory)
    old = directory.with_name(f".{directory.name}.old")
    if not (directory / META).is_file() and (old / META).is_file():
        directory = old
    if not (directory / META).is_file():
        raise CheckpointError(f"no training state in {directory} (expected {META} and "
                              f"{TENSORS}, written every --save-every steps by `qt-ros "
                              f"train`): nothing to resume")
    try:
        meta = json.loads((directory / META).read_text())
        tensors = load_file(str(directory / TENSORS))
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise CheckpointError(f"training state {directory} cannot be read: {exc}") from exc
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{directory / META} is not a training state this qt_ros reads "
                              f"(format {meta.get('format')!r}, version {meta.get('version')})")
    return TrainingState(directory, read_config(directory), meta, tensors)


def model_weights(state: TrainingState, device) -> dict[str, torch.Tensor]:
    """The online network's weights of a state."""
    return load_file(str(state.directory / WEIGHTS), device=str(device))


def restore_learner(learner, state: TrainingState) -> None:
    """Put the target network, the optimizer and the step of ``state`` into ``learner`` (whose
    model already holds the state's weights)."""
    target = {k[len("target/"):]: v for k, v in state.tensors.items() if k.startswith("target/")}
    if learner.target is not None:
        if not target:
            raise CheckpointError(f"training state {state.directory} has no target network, "
                                  f"this run uses one")
        learner.target.load_state_dict(target, strict=True)
    saved = state.meta["optimizer"]
    optimizer_state: dict[int, dict] = {}
    for key, value in state.tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    for index, values in saved["scalars"].items():
        optimizer_state.setdefault(int(index), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()}
              for g in saved["param_groups"]]
    try:
        learner.optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"training state {state.directory}: the optimizer state does not "
                              f"fit this model: {exc}") from exc
    learner.step = int(state.meta["learner_step"])


def rng_states(rank: int, world: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG state, gathered on all ranks (a collective under DDP)."""
    mine = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    if world == 1:
        return {f"{k}/0": v for k, v in mine.items()}
    import torch.distributed as dist

    out = {}
    for kind, value in mine.items():
        value = value.to(device)
        gathered = [torch.empty_like(value) for _ in range(world)]
        dist.all_gather(gathered, value)
        out.update({f"{kind}/{r}": g.cpu() for r, g in enumerate(gathered)})
    return out


def restore_rng(state: TrainingState, rank: int, device: torch.device) -> None:
    """Set this rank's torch RNG to what it was when ``state`` was saved (when saved)."""
    cpu = state.tensors.get(f"rng/cpu/{rank}")
    if cpu is not None:
        torch.set_rng_state(cpu)
    cuda = state.tensors.get(f"rng/cuda/{rank}")
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def _swap_in(tmp: Path, directory: Path) -> None:
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def _plain(value):
    """JSON-ready copy (tuples -> lists; tensors -> numbers)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value
