"""Export of the acting path (``qt-ros export CHECKPOINT --format onnx|torchscript``).

The policy's work per control step is exported as two graphs, so the per-frame cache of
:class:`~qt_ros.qtransformer.policy.Policy` survives the export:

    encode_frame   frame uint8 [1, 3, H, W], instruction embedding [1, E] -> tokens [1, k, D]
                   (FiLM image encoder, TokenLearner, frame layers: once per new frame)
    decide         tokens of the last w frames [1, w, k, D], instruction [1, E](, state [1, S])
                   -> bins int64 [1, d], Q of each chosen bin [1, d]
                   (trunk and the greedy autoregressive decoder, invalid bins masked)

The export directory holds ``encode_frame.onnx`` + ``decide.onnx`` (or ``.pt`` TorchScript
files) and ``export.json``: the tokenizer, the instruction encoder, image size, history, state
size and model id, so :class:`~qt_ros.qtransformer.exported_policy.ExportedPolicy` acts from
the directory alone. The greedy decoder re-runs the head over the dimensions chosen so far
instead of keeping a key/value cache (a static graph; the head is short), which computes the
same Q as ``QTransformer.decode``. ``check_export`` acts with the checkpoint's ``Policy`` and
with the export on the same observations and counts the steps where they pick the same bins.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

FORMATS = ("onnx", "torchscript")
EXPORT_FILE = "export.json"
FORMAT = "qt_ros.export"
VERSION = 1
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or an export that cannot be read."""


class FrameEncoder(nn.Module):
    """One frame and the instruction -> the frame's tokens (``Policy``'s per-frame cache)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, frame: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        return self.model.encode_frames(frame, self.model.film_params(instruction))


class GreedyDecider(nn.Module):
    """Frame tokens of the history (and state) -> the greedy bins and their Q values."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, frame_tokens: torch.Tensor, instruction: torch.Tensor,
                state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        d = model.cfg.num_dims
        context = model.context(frame_tokens, instruction, state)
        b = context.shape[0]
        chosen: list[torch.Tensor] = []
        q_chosen: list[torch.Tensor] = []
        for i in range(d):
            known = (torch.stack(chosen, 1) if chosen
                     else context.new_zeros((b, 0), dtype=torch.long))
            bins = torch.cat([known, known.new_zeros((b, d - i))], 1)       # [B, d]
            q = model.q_from_context(context, bins, num_dims=i + 1)[:, i]     # [B, K]
            q = q.masked_fill(~model.valid_mask[i], float("-inf"))
            best = q.argmax(-1)
            chosen.append(best)
            q_chosen.append(q.gather(1, best[:, None])[:, 0])
        return torch.stack(chosen, 1), torch.stack(q_chosen, 1)


def export_checkpoint(checkpoint: str | Path, out: str | Path, fmt: str = "onnx") -> Path:
    """Export the acting path of ``checkpoint`` into the directory ``out``; returns it."""
    from qt_ros.qtransformer.checkpoint import load_model

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model, tokenizer, encoder_config, config = load_model(checkpoint, "cpu")
    cfg = model.cfg
    if cfg.history == 0:
        raise ExportError(f"checkpoint {checkpoint} is a state-only model (history 0); only "
                          f"models that see camera frames can be exported")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    frame = torch.randint(0, 256, (1, 3, *cfg.image_size), dtype=torch.uint8, generator=g)
    instruction = torch.randn(1, cfg.instruction_dim, generator=g)
    with torch.no_grad():
        tokens = FrameEncoder(model)(frame, instruction)
    frame_tokens = tokens[:, None].expand(1, cfg.history, *tokens.shape[1:]).contiguous()
    decide_inputs = [frame_tokens, instruction]
    if cfg.state_dim:
        decide_inputs.append(torch.randn(1, cfg.state_dim, generator=g))
    names = {"encode_frame": (["frame", "instruction"], ["tokens"]),
             "decide": (["frame_tokens", "instruction", "state"][:len(decide_inputs)],
                        ["bins", "q_values"])}
    graphs = {"encode_frame": (FrameEncoder(model), (frame, instruction)),
              "decide": (GreedyDecider(model), tuple(decide_inputs))}
    for name, (module, inputs) in graphs.items():
        _write(module.eval(), inputs, tmp / (name + SUFFIX[fmt]), fmt, *names[name])
    meta = {"format": FORMAT, "version": VERSION, "runtime": fmt,
            "files": {name: name + SUFFIX[fmt] for name in graphs},
            "inputs": {name: names[name][0] for name in graphs},
            "model_id": config.get("model_id", ""), "step": config.get("step", 0),
            "checkpoint": str(Path(checkpoint).resolve()),
            "image_size": list(cfg.image_size), "history": cfg.history,
            "state_dim": cfg.state_dim, "tokens": list(tokens.shape[1:]),
            "tokenizer": tokenizer.to_config(), "encoder": encoder_config.to_config(),
            "model": cfg.to_config()}
    (tmp / EXPORT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _write(module: nn.Module, inputs: tuple, path: Path, fmt: str, input_names: list[str],
           output_names: list[str]) -> None:
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.trace(module, inputs, check_trace=False).save(str(path))
            return
    import contextlib
    import io
    import warnings

    # The exporter narrates every pass on stdout/stderr; a failure still raises.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(path), dynamo=True, external_data=False,
                          input_names=input_names, output_names=output_names, verbose=False)


def check_export(checkpoint: str | Path, export_dir: str | Path, observations: int = 100,
                 seed: int = 0) -> dict:
    """Act with the checkpoint's ``Policy`` and with the export on the same ``observations``
    (episodes of 10 random frames, so the frame caches are exercised); returns how many chose
    the same bins and the largest difference of the chosen bins' Q values."""
    from qt_ros.qtransformer.checkpoint import load_policy
    from qt_ros.qtransformer.exported_policy import ExportedPolicy

    reference, exported = load_policy(checkpoint), ExportedPolicy(export_dir)
    rng = np.random.default_rng(seed)
    h, w = reference.image_size
    same, q_diff = 0, 0.0
    for k in range(observations):
        if k % 10 == 0:
            instruction = f"pick up the block number {k // 10}"
            reference.reset(instruction)
            exported.reset(instruction)
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        state = (rng.normal(size=reference.state_dim).astype(np.float32)
                 if reference.state_dim else None)
        a, b = reference.act(frame, state), exported.act(frame, state)
        same += bool(np.array_equal(a.bins, b.bins))
        if np.array_equal(a.bins, b.bins):
            q_diff = max(q_diff, float(np.abs(a.q_values - b.q_values).max()))
    return {"observations": observations, "same_bins": same,
            "max_q_difference": q_diff, "runtime": exported.runtime}
