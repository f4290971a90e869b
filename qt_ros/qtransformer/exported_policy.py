"""Acting with an exported model (``qt-ros export``): ONNX Runtime or TorchScript on the CPU.

``ExportedPolicy(EXPORT_DIR)`` has the interface of :class:`~qt_ros.qtransformer.policy.Policy`
that the policy node's control loop uses (``reset``, ``act``, ``tokenizer``, ``model_id``,
``image_size``, ``history``, ``state_dim``), and keeps the same per-frame cache: a control step
encodes the newest frame only (``encode_frame``), then runs the trunk and the greedy decoder
over the last w frames' tokens (``decide``). Greedy only: an exported model does not explore.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np

from qt_ros.data.images import resize_frame
from qt_ros.qtransformer.instruction_encoder import EncoderConfig, make_encoder
from qt_ros.qtransformer.policy import ActResult
from qt_ros.qtransformer.policy_export import EXPORT_FILE, FORMAT, VERSION, ExportError
from qt_ros.qtransformer.tokenizer import ActionTokenizer


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is an export directory (rather than a checkpoint)."""
    return (Path(path) / EXPORT_FILE).is_file()


class ExportedPolicy:
    """A greedy policy from an export directory (see the module docstring)."""

    def __init__(self, directory: str | Path, threads: int = 1) -> None:
        directory = Path(directory)
        try:
            meta = json.loads((directory / EXPORT_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"{directory} is not a readable export (no valid "
                              f"{EXPORT_FILE}: {exc}); write one with `qt-ros export`") from exc
        if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
            raise ExportError(f"{directory / EXPORT_FILE} is not an export this qt_ros reads")
        self.runtime = meta["runtime"]
        self.tokenizer = ActionTokenizer.from_config(meta["tokenizer"])
        self.encoder = make_encoder(EncoderConfig.from_config(meta["encoder"]))
        self.model_id = f"{meta.get('model_id', '')} ({self.runtime})"
        self.image_size = tuple(meta["image_size"])
        self.history = int(meta["history"])
        self.state_dim = int(meta["state_dim"])
        self._inputs = meta["inputs"]
        self._run = {name: _session(directory / file, self.runtime, threads)
                     for name, file in meta["files"].items()}
        self.instruction: str | None = None
        self._frames: deque[np.ndarray] = deque(maxlen=self.history)

    def reset(self, instruction: str) -> None:
        """Start an episode: embed the instruction and forget the frame history."""
        self.instruction = str(instruction)
        emb = np.asarray(self.encoder.encode(self.instruction), dtype=np.float32)
        self._instruction = emb.reshape(1, -1)
        self._frames.clear()

    def act(self, frame: np.ndarray | None, state: np.ndarray | None = None,
            explore: bool | None = None) -> ActResult:
        """One control step: frame (H x W x 3 uint8 RGB, any size), optional state -> action."""
        if self.instruction is None:
            raise RuntimeError("ExportedPolicy.act called before reset(instruction)")
        if explore:
            raise ValueError("an exported policy is greedy: it cannot explore")
        if frame is None or np.asarray(frame).ndim != 3 or np.asarray(frame).shape[2] != 3 \
                or np.asarray(frame).dtype != np.uint8:
            raise ValueError("expected an H x W x 3 uint8 RGB frame")
        image = np.ascontiguousarray(resize_frame(np.asarray(frame), self.image_size)
                                     .transpose(2, 0, 1)[None])
        tokens = self._run["encode_frame"]({"frame": image, "instruction": self._instruction})[0]
        if not self._frames:
            self._frames.extend([tokens] * self.history)       # as the dataset: first repeated
        else:
            self._frames.append(tokens)
        inputs = {"frame_tokens": np.ascontiguousarray(np.stack(self._frames, axis=1)),
                  "instruction": self._instruction}
        if self.state_dim:
            s = np.asarray(state if state is not None else [], dtype=np.float32).reshape(-1)
            if s.shape[0] != self.state_dim or not np.isfinite(s).all():
                raise ValueError(f"expected a finite state vector of size {self.state_dim}")
            inputs["state"] = s[None]
        bins, q = self._run["decide"](inputs)
        bins = np.asarray(bins[0], dtype=np.int64)
        return ActResult(action=self.tokenizer.decode(bins), bins=bins,
                         q_values=np.asarray(q[0], dtype=np.float32),
                         terminate=bool(self.tokenizer.is_terminate(bins)))


def _session(path: Path, runtime: str, threads: int):
    """A function {input name: array} -> [output arrays] running one exported graph."""
    if not path.is_file():
        raise ExportError(f"export file {path} is missing")
    if runtime == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda feed: session.run(None, {n: feed[n] for n in names})
    import torch

    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(feed: dict) -> list[np.ndarray]:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(v) for v in feed.values()))
        out = out if isinstance(out, tuple) else (out,)
        return [o.numpy() for o in out]

    return run
