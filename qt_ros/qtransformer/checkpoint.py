"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``config.json``.

config.json holds everything that rebuilds the policy without unpickling anything: the model
config, the action tokenizer, the instruction encoder, image size, history, state size, the
training step, a content-derived ``model_id`` and free-form ``extra`` (e.g. the learner config,
and which algorithm trained it: ``trained_by(config)`` reads that for an evaluation table).

    save_checkpoint(dir, model, tokenizer, encoder_config, step)   # after training
    policy = load_policy(dir)                                      # on the robot
    make_random_checkpoint(dir, preset="tiny")                     # tests and demos

Loading trusts nothing in the directory: config.json is checked field by field against the
config dataclasses (types, sizes, unknown fields; from their annotations, so a new field is
checked as soon as it exists), the network it describes is counted on PyTorch's ``meta`` device
(nothing allocated) against a parameter limit (``max_parameters``, else the environment variable
``QT_ROS_MAX_PARAMETERS``, else 500 million), and the safetensors header is checked against the
file and that network before a weight is read. Every malformed checkpoint is one
:class:`CheckpointError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from qt_ros.qtransformer.instruction_encoder import EncoderConfig, make_encoder
from qt_ros.qtransformer.model import QTransformer
from qt_ros.qtransformer.model_config import ModelConfig, mismatch, model_config
from qt_ros.qtransformer.policy import Exploration, Policy
from qt_ros.qtransformer.tokenizer import ActionTokenizer

FORMAT = "qt_ros.checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MAX_PARAMETERS_ENV = "QT_ROS_MAX_PARAMETERS"
DEFAULT_MAX_PARAMETERS = 500_000_000
MAX_CONFIG_BYTES = 16 << 20       # a config.json is a few KB; refuse to parse a huge one
MAX_HEADER_BYTES = 100 << 20      # the safetensors format's own header limit
MAX_INT = 2 ** 31 - 1             # sizes in a config are far below this
MAX_MODULES = 10_000              # `base` has 172; building 10k on the meta device takes ~8 s
DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # what load_state_dict casts to float


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
    problem = mismatch(cfg, tokenizer.bins, encoder_config.dim)
    if problem:
        raise ValueError(problem)
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
    """The checkpoint's config.json, checked for encoding, JSON, format, version and the types of
    its top-level fields (the sections are checked when the model is loaded)."""
    directory = Path(directory)
    path = directory / CONFIG
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist or is not a directory "
                              f"(expected a directory holding {WEIGHTS} and {CONFIG})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {CONFIG}; is it a checkpoint "
                              f"directory written by `qt-ros train`?")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"checkpoint {path} is {path.stat().st_size} bytes, not a "
                                  f"config (at most {MAX_CONFIG_BYTES} bytes)")
        config = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"checkpoint {path} is not UTF-8 text: {exc}") from exc
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint {path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a qt_ros checkpoint config (a JSON "
                              f"{type(config).__name__}, not an object)")
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a qt_ros checkpoint config (field 'format' is "
                              f"{config.get('format')!r:.80}, not {FORMAT!r})")
    version = config.get("version", 0)
    _expect(path, "version", version, int)
    if version > VERSION:
        raise CheckpointError(f"checkpoint {directory} has version {version}, this "
                              f"qt_ros reads up to {VERSION}: update qt_ros")
    for name, hint in (("model_id", str), ("step", int), ("extra", dict)):
        if name in config:
            _expect(path, name, config[name], hint)
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


def load_model(directory: str | Path, device: str | torch.device = "cpu",
               max_parameters: int | None = None
               ) -> tuple[QTransformer, ActionTokenizer, EncoderConfig, dict]:
    """Rebuild the model (eval mode) from a checkpoint: (model, tokenizer, encoder config,
    full config). A network of more than ``max_parameters`` (default: ``QT_ROS_MAX_PARAMETERS``,
    else 500 million) is refused before anything is allocated."""
    directory = Path(directory)
    config = read_config(directory)
    path = directory / CONFIG
    cfg, tokenizer, encoder_config = parse_sections(path, config)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {directory} has {CONFIG} but no {WEIGHTS}")
    limit = parameter_limit(max_parameters)
    shapes = _meta_shapes(path, cfg, limit)
    header = _read_header(weights)
    _match_header(weights, header, shapes)
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as exc:  # noqa: BLE001 - the library's errors for a file it cannot read
        raise CheckpointError(f"checkpoint {weights} cannot be read: {exc}") from exc
    try:
        model = QTransformer(cfg).to(device)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, MemoryError) as exc:
        raise CheckpointError(f"checkpoint {weights} does not match its {CONFIG}: {exc}") from exc
    return model.eval(), tokenizer, encoder_config, config


def parse_sections(path: Path, config: dict
                   ) -> tuple[ModelConfig, ActionTokenizer, EncoderConfig]:
    """The ``model``, ``tokenizer`` and ``encoder`` sections of a config.json (``path``), each
    checked against its dataclass, and checked against each other."""
    cfg = _section(path, config, "model", ModelConfig)
    tokenizer = _section(path, config, "tokenizer", ActionTokenizer)
    encoder = _section(path, config, "encoder", EncoderConfig)
    problem = mismatch(cfg, tokenizer.bins, encoder.dim)
    if problem:
        raise CheckpointError(f"{path}: {problem} (fields 'tokenizer.bins', 'encoder.dim', "
                              f"'model.action_bins', 'model.instruction_dim')")
    return cfg, tokenizer, encoder


def parameter_limit(max_parameters: int | None = None) -> int:
    """The largest network a checkpoint may describe: the argument, else the environment
    variable ``QT_ROS_MAX_PARAMETERS``, else 500 million."""
    if max_parameters is not None:
        return int(max_parameters)
    text = os.environ.get(MAX_PARAMETERS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PARAMETERS
    try:
        return int(float(text))
    except ValueError:
        raise CheckpointError(f"{MAX_PARAMETERS_ENV}={text!r} is not a number of "
                              f"parameters (e.g. 2e9)") from None


def load_policy(path: str | Path, device: str | torch.device = "cpu",
                exploration: Exploration | None = None, seed: int = 0,
                max_parameters: int | None = None) -> Policy:
    """A ready ``Policy`` from a checkpoint directory (greedy unless ``exploration``)."""
    model, tokenizer, encoder_config, config = load_model(path, device, max_parameters)
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


# -- checking a checkpoint before trusting it --------------------------------------------------

def _expect(path: Path, name: str, value: object, hint: object) -> None:
    problem = _type_problem(value, hint)
    if problem:
        raise CheckpointError(f"{path}: field '{name}' must be {problem}, got {value!r:.80}")


def _type_problem(value: object, hint: object) -> str:
    """'' if the JSON ``value`` fits the annotation ``hint``, else what was expected. Integers are
    sizes (0 <= n <= 2^31-1); floats are finite; an annotation not understood here is left to the
    dataclass's own checks."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, a) for a in args]
        return "" if "" in problems else " or ".join(problems)
    if hint is type(None):
        return "" if value is None else "null"
    if hint is bool:
        return "" if isinstance(value, bool) else "true or false"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT
        return "" if ok else f"an integer from 0 to {MAX_INT}"
    if hint is float:
        ok = (isinstance(value, int | float) and not isinstance(value, bool)
              and math.isfinite(value))
        return "" if ok else "a finite number"
    if hint is str:
        return "" if isinstance(value, str) else "a string"
    if hint is dict or origin is dict:
        return "" if isinstance(value, dict) else "an object"
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, list):
            return "a list"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return f"a list of {len(args)} values"
            problems = [_type_problem(v, a) for v, a in zip(value, args, strict=True)]
        else:
            item = args[0] if args else typing.Any
            problems = [_type_problem(v, item) for v in value]
        bad = next((p for p in problems if p), "")
        return f"a list of values each {bad}" if bad else ""
    return ""


def _section(path: Path, config: dict, section: str, cls: type):
    """One section of config.json rebuilt into its dataclass ``cls``, every field checked."""
    if section not in config:
        raise CheckpointError(f"{path}: missing field '{section}'")
    values = config[section]
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: field '{section}' must be an object, got {values!r:.80}")
    hints = typing.get_type_hints(cls) if is_dataclass(cls) else {}
    known = [f.name for f in fields(cls) if f.init]
    unknown = ", ".join(f"{section}.{u}" for u in sorted(set(values) - set(known)))
    if unknown:
        raise CheckpointError(f"{path}: unknown field(s) {unknown} (known: {', '.join(known)}); "
                              f"was it written by a newer qt_ros?")
    for name, value in values.items():
        _expect(path, f"{section}.{name}", value, hints.get(name, typing.Any))
    try:
        return cls.from_config(values) if hasattr(cls, "from_config") else cls(**values)
    except Exception as exc:  # noqa: BLE001 - the dataclass's own checks: any failure is the file's
        zeros = ", ".join(f"{section}.{k}" for k, v in values.items()
                          if v == 0 and type(v) is int)
        hint = f" (fields that are 0: {zeros})" if isinstance(exc, ArithmeticError) else ""
        raise CheckpointError(f"{path}: field '{section}' is invalid: {exc}{hint}") from exc


_counting = threading.local()


class _TooLarge(Exception):
    pass


def _count(module, name, tensor):
    if getattr(_counting, "limit", None) is not None and tensor is not None:
        _counting.total += tensor.numel()
        if _counting.total > _counting.limit:
            raise _TooLarge(f"more than {_counting.limit:,} parameters")
    return None


def _count_module(module, name, submodule):
    if getattr(_counting, "limit", None) is not None:
        _counting.modules += 1
        if _counting.modules > MAX_MODULES:
            raise _TooLarge(f"more than {MAX_MODULES:,} modules (layers)")
    return None


def _meta_shapes(path: Path, cfg: ModelConfig, limit: int) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the network ``cfg`` describes, built on the ``meta``
    device (no memory), stopping as soon as its parameters pass ``limit``."""
    module = torch.nn.modules.module
    hooks = (module.register_module_parameter_registration_hook(_count),
             module.register_module_module_registration_hook(_count_module))
    _counting.limit, _counting.total, _counting.modules = limit, 0, 0
    try:
        with torch.device("meta"):
            model = QTransformer(cfg)
    except _TooLarge as exc:
        fix = (f"if it is intended, raise the limit with {MAX_PARAMETERS_ENV} or the "
               f"max_parameters argument" if "parameters" in str(exc) else "not a qt_ros model")
        raise CheckpointError(f"{path}: field 'model' describes a network of {exc}, counted "
                              f"before allocating anything; {fix}") from None
    except Exception as exc:  # noqa: BLE001 - a config the network cannot be built from
        raise CheckpointError(f"{path}: field 'model' cannot be built: {exc}") from exc
    finally:
        _counting.limit = None
        for hook in hooks:
            hook.remove()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _read_header(path: Path) -> dict:
    """The safetensors header of ``path``, checked against the file: every tensor's dtype, shape
    and byte range (the library reads nothing we have not checked)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"checkpoint {path} is {size} bytes, too short for a "
                                  f"safetensors file: write the checkpoint again")
        length = int.from_bytes(head, "little")
        if not 0 < length <= min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(f"checkpoint {path} is not a safetensors file: its header "
                                  f"length {length} does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(length).decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise CheckpointError(f"checkpoint {path}: the safetensors header is not JSON: "
                                  f"{exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path}: the safetensors header is not an object")
    header.pop("__metadata__", None)
    data = size - 8 - length
    for name, entry in header.items():
        where = f"checkpoint {path}: tensor '{name}'"
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype not in DTYPE_BYTES:
            raise CheckpointError(f"{where} has dtype {dtype!r:.40}, not one of "
                                  f"{sorted(DTYPE_BYTES)}")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if _type_problem(shape, list[int]) or _type_problem(offsets, tuple[int, int]):
            raise CheckpointError(f"{where}: shape {shape!r:.40} or data_offsets "
                                  f"{offsets!r:.40} is not a list of sizes")
        need = math.prod(shape) * DTYPE_BYTES[dtype]
        if offsets[1] > data or offsets[1] - offsets[0] != need:
            raise CheckpointError(f"{where}: shape {shape} needs {need} bytes but data_offsets "
                                  f"{offsets} give {offsets[1] - offsets[0]} of the file's {data}")
    return header


def _match_header(path: Path, header: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(shapes) - set(header))
    extra = sorted(set(header) - set(shapes))
    if missing or extra:
        raise CheckpointError(f"checkpoint {path} does not match its {CONFIG}: tensors missing "
                              f"{missing[:5]}, unexpected {extra[:5]}")
    for name, shape in shapes.items():
        if tuple(header[name]["shape"]) != shape:
            raise CheckpointError(f"checkpoint {path} does not match its {CONFIG}: tensor "
                                  f"'{name}' has shape {header[name]['shape']}, the config's "
                                  f"model needs {list(shape)} (check the 'model' fields)")
